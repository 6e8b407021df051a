export {}
export * as NatPmpMessage from "./NatPmpMessage.js"
export * as RouterOsProtocol from "./RouterOsProtocol.js"
