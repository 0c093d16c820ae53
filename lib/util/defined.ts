/** `o` without its undefined properties. Under exactOptionalPropertyTypes an option set to
 *  undefined is not an absent one, so options passed on from a destructured object go through this. */
export function definedProperties<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}
