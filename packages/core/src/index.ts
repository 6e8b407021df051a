export {}
export * as NatPmpMessage from "./NatPmpMessage.js"
export * as NatPmpClient from "./NatPmpClient.js"
export * as RouterOsProtocol from "./RouterOsProtocol.js"
