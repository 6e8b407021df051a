// Types for the `default-gateway` package (v7), which ships none.
declare module "default-gateway" {
  export interface DefaultGateway {
    readonly gateway: string
    readonly version: 4 | 6
    /** The interface name, when the platform reports it. */
    readonly int: string | null
  }
  export function gateway4async(): Promise<DefaultGateway>
  export function gateway6async(): Promise<DefaultGateway>
  export function gateway4sync(): DefaultGateway
  export function gateway6sync(): DefaultGateway
}
