// Squall's nodejs20 runtime: a Lambda Runtime API client, as Lambda's own Node runtime is.
//
// Started by the launcher (squall/runtime/launcher.py) inside the function's sandbox with
// _HANDLER ("file.export"), LAMBDA_TASK_ROOT and AWS_LAMBDA_RUNTIME_API set. It loads the
// handler first (CommonJS or ESM; a load error goes to /runtime/init/error and the deploy
// fails with it), then loops: GET /next -> handler(event, context) -> POST /response or
// /error ({errorType, errorMessage, stackTrace}). It is started ahead of demand (a spare), so
// all of this is off the request's path. Imports nothing but Node's own modules.

import http from "node:http";
import path from "node:path";
import fs from "node:fs";
import util from "node:util";
import { pathToFileURL } from "node:url";

const API = process.env.AWS_LAMBDA_RUNTIME_API;
const [HOST, PORT] = API.split(":");
const BASE = "/2018-06-01/runtime";
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let currentRequestId = null;

function call(method, urlPath, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: HOST, port: PORT, method, path: BASE + urlPath, agent, headers },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers,
                                      body: Buffer.concat(chunks) }));
        res.on("error", reject);
      });
    req.on("error", reject);
    if (body !== undefined) req.end(body); else req.end();
  });
}

function errorShape(err) {
  if (err instanceof Error) {
    return { errorType: err.name || "Error", errorMessage: err.message,
             stackTrace: (err.stack || "").split("\n").slice(1).map((l) => l.trim()) };
  }
  return { errorType: "Error", errorMessage: typeof err === "string" ? err : util.inspect(err),
           stackTrace: [] };
}

function postJson(urlPath, value, headers = {}) {
  const body = JSON.stringify(value === undefined ? null : value);
  return call("POST", urlPath, body, { "Content-Type": "application/json", ...headers });
}

// console.* as Lambda writes it: timestamp, request id, level, message (one line per record)
function patchConsole() {
  const write = (level) => (...args) => {
    const message = util.format(...args).replace(/\n/g, "\r");
    process.stdout.write(`${new Date().toISOString()}\t${currentRequestId ?? "undefined"}\t` +
                         `${level}\t${message}\n`);
  };
  console.log = console.info = write("INFO");
  console.warn = write("WARN");
  console.error = write("ERROR");
  console.debug = write("DEBUG");
  console.trace = write("TRACE");
}

class HandlerNotFound extends Error {
  constructor(message) { super(message); this.name = "Runtime.HandlerNotFound"; }
}

function findModule(root, file) {
  for (const ext of [".js", ".mjs", ".cjs"]) {
    const candidate = path.resolve(root, file + ext);
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new HandlerNotFound(`Cannot find module '${file}' (tried .js, .mjs, .cjs in ${root})`);
}

async function registerDepsResolver() {
  // ESM ignores NODE_PATH: bare imports the bundle cannot resolve are retried from the
  // dependencies installed at deploy (squall.bundle.npm). CommonJS uses NODE_PATH.
  const deps = process.env.SQUALL_NODE_DEPS;
  if (!deps) return;
  const { register } = await import("node:module");
  const parents = deps.split(":").map((d) => pathToFileURL(path.join(d, "package.json")).href);
  register(new URL("./deps-resolve.mjs", import.meta.url), { data: { parents } });
}

async function loadHandler(spec) {
  const dot = spec.lastIndexOf(".");
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const mod = await import(pathToFileURL(findModule(root, file)).href);
  const fn = mod[name] ?? mod.default?.[name];
  if (typeof fn !== "function") {
    throw new HandlerNotFound(`${file}.${name} is undefined or not exported`);
  }
  return fn;
}

function makeContext(headers) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"]);
  const requestId = headers["lambda-runtime-aws-request-id"];
  return {
    awsRequestId: requestId,
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function run(handler, event, context) {
  // async handlers return a promise; callback-style ones (event, context, callback) call back
  return new Promise((resolve, reject) => {
    const callback = (err, value) => (err ? reject(err) : resolve(value));
    context.succeed = (value) => resolve(value);
    context.fail = (err) => reject(err);
    context.done = callback;
    try {
      const out = handler(event, context, callback);
      if (out && typeof out.then === "function") out.then(resolve, reject);
      else if (handler.length < 3) resolve(out);
    } catch (err) {
      reject(err);
    }
  });
}

async function main() {
  let handler;
  patchConsole();  // init-time lines too, with request id "undefined" as in Lambda
  try {
    await registerDepsResolver();
    handler = await loadHandler(process.env._HANDLER || "index.handler");
  } catch (err) {
    const shape = errorShape(err);
    process.stderr.write(`${shape.errorType}: ${shape.errorMessage}\n`);
    await postJson("/init/error", shape,
                   { "Lambda-Runtime-Function-Error-Type": shape.errorType });
    process.exit(1);
  }
  process.on("uncaughtException", async (err) => {
    const shape = errorShape(err);
    shape.errorType = "Runtime.UncaughtException";
    if (currentRequestId) {
      await postJson(`/invocation/${currentRequestId}/error`, shape).catch(() => {});
    }
    process.exit(1);
  });
  for (;;) {
    const next = await call("GET", "/invocation/next");
    if (next.status !== 200) {
      process.stderr.write(`runtime API /next answered ${next.status}: ${next.body}\n`);
      process.exit(1);
    }
    const context = makeContext(next.headers);
    currentRequestId = context.awsRequestId;
    const trace = next.headers["lambda-runtime-trace-id"];
    if (trace) process.env._X_AMZN_TRACE_ID = trace; else delete process.env._X_AMZN_TRACE_ID;
    let event;
    try {
      event = next.body.length ? JSON.parse(next.body.toString("utf8")) : null;
    } catch (err) {
      event = next.body.toString("utf8");
    }
    const rid = currentRequestId;
    // A handler awaiting a promise nothing will settle leaves Node's loop empty, and Node
    // would exit: hold the loop open so it times out as on Lambda.
    const hold = setInterval(() => {}, 1 << 30);
    try {
      const value = await run(handler, event, context);
      await postJson(`/invocation/${rid}/response`, value);
    } catch (err) {
      const shape = errorShape(err);
      await postJson(`/invocation/${rid}/error`, shape,
                     { "Lambda-Runtime-Function-Error-Type": shape.errorType });
    } finally {
      clearInterval(hold);
    }
    currentRequestId = null;
  }
}

main();
