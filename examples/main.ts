/** Whether this module is the program node (or tsx) was started with, so an example runs only when run directly. */
import { pathToFileURL } from "node:url"

export const isMain = (moduleUrl: string): boolean =>
  process.argv[1] !== undefined && moduleUrl === pathToFileURL(process.argv[1]).href
