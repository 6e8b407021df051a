export {}
export * as NatPmpMessage from "./NatPmpMessage.js"
export * as NatPmpClient from "./NatPmpClient.js"
export * as GatewayDiscovery from "./GatewayDiscovery.js"
export * as RouterOsProtocol from "./RouterOsProtocol.js"
export * as RouterOsClient from "./RouterOsClient.js"
export * as RouterOsCommands from "./RouterOsCommands.js"
