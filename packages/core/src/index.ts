/**
 * @natpmp-bridge/core: NAT-PMP (RFC 6886) wire codecs and client, gateway discovery, and a RouterOS API client.
 *
 * @since 0.1.0
 */
export * as GatewayDiscovery from "./GatewayDiscovery.js"
export * as Ipv4 from "./Ipv4.js"
export * as NatPmpClient from "./NatPmpClient.js"
export * as NatPmpMessage from "./NatPmpMessage.js"
export * as RouterOsClient from "./RouterOsClient.js"
export * as RouterOsCommands from "./RouterOsCommands.js"
export * as RouterOsProtocol from "./RouterOsProtocol.js"
export * as UdpSocket from "./UdpSocket.js"
