export {}
export * as NatPmpGatewaySimulator from "./NatPmpGatewaySimulator.js"
