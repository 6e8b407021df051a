export {}
export * as NatPmpGatewaySimulator from "./NatPmpGatewaySimulator.js"
export * as RouterOsSimulator from "./RouterOsSimulator.js"
