export {}
export * as NatPmpMessage from "./NatPmpMessage.js"
