/**
 * The RouterOS commands a user pastes into the router's terminal to put the bridge in service, for their own
 * addresses and interfaces: a dedicated API user in a group with only the policies the bridge needs, the API
 * service limited to the bridge's address, the rule that sends LAN clients' NAT-PMP requests to the bridge and, for
 * a bridge in a RouterOS container, its network, environment list and container.
 *
 * Pure: `natpmp-bridge check` gathers the inputs (reading the router, never changing it) and prints the result.
 */
import { Ipv4 } from "@natpmp-bridge/core"

/** The group and, unless the configuration names another one, the user of the bridge on the router. */
export const groupName = "natpmp-bridge"
export const defaultUserName = "natpmp-bridge"

/**
 * What the bridge does through the API: `print` (NAT rules, routes, addresses, version) needs `read`;
 * `add`/`set`/`remove` of NAT rules need `write`; logging in through the API needs `api`.
 */
export const policies = ["read", "write", "api"] as const

/** Written in place of the password: the commands are printed, the password stays in the configuration. */
export const passwordPlaceholder = "<MIKROTIK_API_PASSWORD>"

/** A group of commands with what they are for. */
export interface Step {
  readonly id: "api-user" | "api-service" | "container-network" | "container" | "redirect"
  readonly title: string
  readonly commands: ReadonlyArray<string>
}

export interface LanAddress {
  readonly interface: string
  /** `a.b.c.d/len` as the router lists it. */
  readonly address: string
}

export interface ContainerOptions {
  /** The container's address with its prefix (the veth), e.g. `172.31.53.2/30`; the router takes the first host. */
  readonly address: Ipv4.Cidr
  /** `file.tar` (uploaded to the router) or a registry reference (pulled by the router). */
  readonly image: string
  /** Where the router keeps the container's files, e.g. `usb1/natpmp-bridge`. */
  readonly rootDir: string
  readonly veth: string
  readonly bridge: string
}

export interface SetupInput {
  readonly routerVersion: { readonly major: number; readonly minor: number } | undefined
  readonly vpnInterface: string
  /** The router's LAN addresses (static, not on the VPN interface). */
  readonly lanAddresses: ReadonlyArray<LanAddress>
  /** The bridge's address as the router reaches it (ignored with `container`: the container's address). */
  readonly bridgeHost: string
  readonly bridgePort: number
  readonly api: { readonly service: "api" | "api-ssl"; readonly port: number }
  /** The configured API user; `admin` becomes {@link defaultUserName}. */
  readonly user: string
  readonly container: ContainerOptions | undefined
  /** Environment of the bridge in the container (without the API address, user and password: added here). */
  readonly environment: ReadonlyArray<readonly [string, string]>
}

export interface Setup {
  /** Where the bridge runs, as the router reaches it. */
  readonly bridgeHost: string
  readonly user: string
  readonly steps: ReadonlyArray<Step>
  readonly notes: ReadonlyArray<string>
}

/** A RouterOS value: bare when it is a plain word, quoted otherwise. */
export const quote = (value: string): string =>
  /^[A-Za-z0-9._:/@*+-]+$/.test(value) ? value : `"${value.replace(/[\\"$]/g, (c) => `\\${c}`)}"`

const comment = "natpmp-bridge"

/** The container's addresses: the router's side (first host of the network) and the container's. */
export const containerAddresses = (cidr: Ipv4.Cidr) => {
  const network = Ipv4.network(cidr.address, cidr.prefix)
  const gateway = Ipv4.format(network + 1 === cidr.address ? network + 2 : network + 1)
  return {
    container: Ipv4.format(cidr.address),
    gateway,
    network: `${Ipv4.format(network)}/${cidr.prefix}`,
    prefix: cidr.prefix
  }
}

/** Whether `/container/envs` names its lists with `list=` (and `/container` takes `envlists=`): RouterOS 7.21+. */
export const envsUseList = (version: SetupInput["routerVersion"]): boolean =>
  version !== undefined && (version.major > 7 || (version.major === 7 && version.minor >= 21))

/** The rule that sends NAT-PMP requests to the router's LAN address on to the bridge. */
export const redirectCommand = (options: {
  readonly lanInterface: string
  readonly routerAddress: string
  readonly bridgeAddress: string
  readonly bridgePort: number
}): string =>
  `/ip firewall nat add chain=dstnat in-interface=${
    quote(options.lanInterface)
  } dst-address=${options.routerAddress} ` +
  `protocol=udp dst-port=5351 action=dst-nat to-addresses=${options.bridgeAddress} to-ports=${options.bridgePort} ` +
  `comment="NAT-PMP requests to natpmp-bridge"`

export const make = (input: SetupInput): Setup => {
  const user = input.user === "admin" ? defaultUserName : input.user
  const container = input.container === undefined ? undefined : {
    ...input.container,
    ...containerAddresses(input.container.address)
  }
  const bridgeHost = container?.container ?? input.bridgeHost
  // the container's own bridge is no LAN of clients
  const lanAddresses = input.lanAddresses.filter((lan) => lan.interface !== container?.bridge)
  const steps: Array<Step> = []
  const notes: Array<string> = []

  steps.push({
    id: "api-user",
    title: `a group with only the policies the bridge needs (${policies.join(", ")}) and its user`,
    commands: [
      `/user group add name=${groupName} policy=${policies.join(",")} comment=${comment}`,
      `/user add name=${quote(user)} group=${groupName} address=${bridgeHost}/32 ` +
      `password="${passwordPlaceholder}" comment=${comment}`
    ]
  })
  if (input.user === "admin" && input.container === undefined) {
    notes.push(`Set MIKROTIK_API_USER=${user} and the password you give it, instead of admin.`)
  }
  notes.push(`Replace ${passwordPlaceholder} with the API password (MIKROTIK_API_PASSWORD).`)

  steps.push({
    id: "api-service",
    title: `the ${input.api.service} service (port ${input.api.port}) accepts only the bridge`,
    commands: [`/ip service set ${input.api.service} address=${bridgeHost}/32 disabled=no`]
  })
  notes.push(
    `The ${input.api.service} service's address= replaces its allowed list: add other hosts that use the API ` +
      `(comma-separated), e.g. the one running this check.`
  )

  if (container !== undefined) {
    const useList = envsUseList(input.routerVersion)
    const envs = useList ? `list=${comment}` : `name=${comment}`
    const environment: Array<readonly [string, string]> = [
      ...input.environment,
      ["MIKROTIK_API_ADDRESS", `${container.gateway}:${input.api.port}`],
      ["MIKROTIK_API_USER", user],
      ["MIKROTIK_API_PASSWORD", passwordPlaceholder]
    ]
    steps.push({
      id: "container-network",
      title: `the container's network ${container.network}: veth ${container.veth} (${container.container}) on ` +
        `bridge ${container.bridge} (${container.gateway})`,
      commands: [
        `/interface veth add name=${quote(container.veth)} address=${container.container}/${container.prefix} ` +
        `gateway=${container.gateway} comment=${comment}`,
        `/interface bridge add name=${quote(container.bridge)} comment=${comment}`,
        `/interface bridge port add bridge=${quote(container.bridge)} interface=${quote(container.veth)}`,
        `/ip address add address=${container.gateway}/${container.prefix} interface=${quote(container.bridge)} ` +
        `comment=${comment}`,
        `/interface list member add list=LAN interface=${quote(container.bridge)} comment=${comment}`,
        `/ip firewall nat add chain=srcnat src-address=${container.network} out-interface=${
          quote(input.vpnInterface)
        } action=masquerade comment="natpmp-bridge to the VPN gateway"`
      ]
    })
    const image = container.image.endsWith(".tar")
      ? `file=${quote(container.image)}`
      : `remote-image=${quote(container.image)}`
    steps.push({
      id: "container",
      title: `the bridge's environment (${useList ? "list" : "name"} ${comment}) and the container (start it once ` +
        `/container print shows it extracted)`,
      commands: [
        ...environment.map(([key, value]) => `/container envs add ${envs} key=${key} value=${quote(value)}`),
        `/container add ${image} interface=${quote(container.veth)} ${
          useList ? "envlists" : "envlist"
        }=${comment} root-dir=${quote(container.rootDir)} start-on-boot=yes logging=yes comment=${comment}`,
        `/container start [find where comment=${comment}]`
      ]
    })
    notes.push(
      `The container needs RouterOS 7 with the container package and device-mode container=yes; ` +
        `${
          container.image.endsWith(".tar")
            ? `upload ${container.image} built for the router's CPU (docker buildx build --platform linux/arm64 -o type=docker,dest=${
              container.image.split("/").at(-1)
            } .; linux/arm/v7 or linux/amd64 for other routers) first`
            : `the router pulls ${container.image} (set /container config registry-url= if needed)`
        }.`
    )
    notes.push(
      `/interface list member puts ${container.bridge} in the LAN list so the default firewall lets the container ` +
        `reach the API; the srcnat rule lets its NAT-PMP requests reach the VPN gateway (skip it if a masquerade ` +
        `on ${input.vpnInterface} already covers ${container.network}).`
    )
  }

  steps.push({
    id: "redirect",
    title:
      `send LAN clients' NAT-PMP requests (UDP 5351 to the router) to the bridge at ${bridgeHost}:${input.bridgePort}`,
    commands: lanAddresses.map((lan) =>
      redirectCommand({
        lanInterface: lan.interface,
        routerAddress: lan.address.split("/")[0],
        bridgeAddress: bridgeHost,
        bridgePort: input.bridgePort
      })
    )
  })
  if (lanAddresses.length === 0) notes.push("The router has no LAN address to redirect NAT-PMP requests from.")
  return { bridgeHost, user, steps, notes }
}
