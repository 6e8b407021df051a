/**
 * Simulators that speak the real wire protocols, for tests, demos and benchmarks: a NAT-PMP gateway and a RouterOS
 * API server.
 *
 * @since 0.1.0
 */
export * as Natpmpc from "./Natpmpc.js"
export * as NatPmpGatewaySimulator from "./NatPmpGatewaySimulator.js"
export * as NetworkLab from "./NetworkLab.js"
export * as NftDstNat from "./NftDstNat.js"
export * as Prng from "./Prng.js"
export * as RouterOsSimulator from "./RouterOsSimulator.js"
