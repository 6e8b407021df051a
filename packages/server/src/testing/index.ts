export * as BridgeHarness from "./BridgeHarness.js"
export * as LanClient from "./LanClient.js"
