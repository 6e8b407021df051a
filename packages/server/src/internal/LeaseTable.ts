/**
 * The bridge's leases by key, with the indexes a request needs in constant or logarithmic time however many leases
 * there are: the leases per client (quota), the router ports in use per protocol, and the earliest expiry (a binary
 * min-heap with lazy deletion: an entry counts while its lease is still the one recorded under its key).
 *
 * @internal
 */

/** What the table needs to know of a lease. */
export interface Indexed {
  readonly client: string
  readonly protocol: string
  readonly routerPort: number
  readonly expiresAt: number
}

/** The key of a router port in the index. */
const portKey = (protocol: string, port: number): string => `${protocol}/${port}`

interface Scheduled<L> {
  readonly at: number
  readonly key: string
  readonly lease: L
}

export class LeaseTable<L extends Indexed> {
  private readonly byKey = new Map<string, L>()
  private readonly perClient = new Map<string, number>()
  /**
   * protocol/routerPort → the key of the lease whose rule matches that port, or the keys when several do (a set for
   * every port would cost 10,000 leases 3 MB).
   */
  private readonly routerPorts = new Map<string, string | Set<string>>()
  private heap: Array<Scheduled<L>> = []

  get size(): number {
    return this.byKey.size
  }

  get(key: string): L | undefined {
    return this.byKey.get(key)
  }

  has(key: string): boolean {
    return this.byKey.has(key)
  }

  keys(): IterableIterator<string> {
    return this.byKey.keys()
  }

  values(): IterableIterator<L> {
    return this.byKey.values()
  }

  entries(): IterableIterator<[string, L]> {
    return this.byKey.entries()
  }

  /** Records (or replaces) the lease of `key`. */
  set(key: string, lease: L): void {
    const previous = this.byKey.get(key)
    if (previous !== undefined) this.unindex(key, previous)
    this.byKey.set(key, lease)
    this.perClient.set(lease.client, (this.perClient.get(lease.client) ?? 0) + 1)
    const port = portKey(lease.protocol, lease.routerPort)
    const holders = this.routerPorts.get(port)
    if (holders === undefined) this.routerPorts.set(port, key)
    else if (typeof holders !== "string") holders.add(key)
    else if (holders !== key) this.routerPorts.set(port, new Set([holders, key]))
    this.schedule({ at: lease.expiresAt, key, lease })
  }

  delete(key: string): boolean {
    const lease = this.byKey.get(key)
    if (lease === undefined) return false
    this.byKey.delete(key)
    this.unindex(key, lease)
    return true
  }

  clear(): void {
    this.byKey.clear()
    this.perClient.clear()
    this.routerPorts.clear()
    this.heap = []
  }

  /** The number of leases `client` holds. */
  heldBy(client: string): number {
    return this.perClient.get(client) ?? 0
  }

  /** Whether a lease other than `exceptKey`'s has a rule matching `protocol` `port`. */
  routerPortTaken(protocol: string, port: number, exceptKey: string): boolean {
    const holders = this.routerPorts.get(portKey(protocol, port))
    if (holders === undefined) return false
    return typeof holders === "string" ? holders !== exceptKey : holders.size > 1 || !holders.has(exceptKey)
  }

  /** The earliest expiry among the leases (clock milliseconds), infinity when there is none. */
  nextExpiry(): number {
    this.dropStale()
    return this.heap.length === 0 ? Number.POSITIVE_INFINITY : this.heap[0].at
  }

  /**
   * The leases expired at `now`, taken off the expiry schedule: whoever takes them either removes them or gives them
   * back with {@link reschedule}.
   */
  takeExpired(now: number): Array<[string, L]> {
    const due = new Map<string, L>()
    for (this.dropStale(); this.heap.length > 0 && this.heap[0].at <= now; this.dropStale()) {
      const entry = this.pop()
      due.set(entry.key, entry.lease)
    }
    return [...due]
  }

  /** Puts a lease taken by {@link takeExpired} back on the schedule, unless it was removed or replaced since. */
  reschedule(key: string, lease: L): void {
    if (this.byKey.get(key) === lease) this.schedule({ at: lease.expiresAt, key, lease })
  }

  private unindex(key: string, lease: L): void {
    const held = (this.perClient.get(lease.client) ?? 1) - 1
    if (held <= 0) this.perClient.delete(lease.client)
    else this.perClient.set(lease.client, held)
    const port = portKey(lease.protocol, lease.routerPort)
    const holders = this.routerPorts.get(port)
    if (holders === key) {
      this.routerPorts.delete(port)
    } else if (typeof holders === "object" && holders.delete(key) && holders.size === 1) {
      this.routerPorts.set(port, holders.values().next().value!)
    }
    // the lease's heap entry stays until it surfaces (or a compaction): it no longer matches the table
  }

  private isLive(entry: Scheduled<L>): boolean {
    return this.byKey.get(entry.key) === entry.lease
  }

  private dropStale(): void {
    while (this.heap.length > 0 && !this.isLive(this.heap[0])) this.pop()
  }

  private schedule(entry: Scheduled<L>): void {
    // renewals leave stale entries behind: rebuilt from the live ones when they outnumber them
    if (this.heap.length >= 2 * this.byKey.size + 1024) this.compact()
    const heap = this.heap
    let index = heap.length
    heap.push(entry)
    while (index > 0) {
      const parent = (index - 1) >> 1
      if (heap[parent].at <= entry.at) break
      heap[index] = heap[parent]
      index = parent
    }
    heap[index] = entry
  }

  private pop(): Scheduled<L> {
    const heap = this.heap
    const top = heap[0]
    const last = heap.pop()!
    if (heap.length > 0) {
      let index = 0
      for (;;) {
        const left = 2 * index + 1
        if (left >= heap.length) break
        const right = left + 1
        const child = right < heap.length && heap[right].at < heap[left].at ? right : left
        if (heap[child].at >= last.at) break
        heap[index] = heap[child]
        index = child
      }
      heap[index] = last
    }
    return top
  }

  private compact(): void {
    const live = this.heap.filter((entry) => this.isLive(entry))
    this.heap = []
    for (const entry of live) this.schedule(entry)
  }
}
