// Module resolve hook (node:module register) for ESM handlers: a bare specifier the bundle
// cannot resolve is resolved again as if imported from the dependency folder that
// squall.bundle.npm installed at deploy, with Node's own resolver (exports, conditions).

let parents = [];

export async function initialize(data) {
  parents = data?.parents ?? [];
}

function isBare(specifier) {
  return !/^(\.{0,2}\/|[a-zA-Z][a-zA-Z0-9+.-]*:)/.test(specifier);
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (err) {
    if (err?.code !== "ERR_MODULE_NOT_FOUND" || !isBare(specifier)) throw err;
    for (const parentURL of parents) {
      try {
        return await nextResolve(specifier, { ...context, parentURL });
      } catch {
        // try the next folder
      }
    }
    throw err;
  }
}
