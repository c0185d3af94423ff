// Helpers for tests against the real stack: CHATSPHERE_URL is the public entry (nginx in front
// of auth-service, chat-service and the gateways), GATEWAY_BIN a gateway binary the tests start
// (and kill) themselves, with the stack's environment (or its .env, read from REPO_ROOT).
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";

import WebSocket from "ws";

import { ChatSphere, type ChatSphereOptions, type WebSocketConstructor } from "../src/index.js";

export const baseUrl = process.env.CHATSPHERE_URL ?? "http://127.0.0.1:8000";
export const wsBase = `${baseUrl.replace(/^http/, "ws")}/ws`;
const repoRoot = process.env.REPO_ROOT ?? path.resolve(import.meta.dirname, "../../..");
const gatewayBin = process.env.GATEWAY_BIN ?? path.join(repoRoot, "target/debug/gateway");

export const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

let counter = 0;
/** A username no other run has. */
export function uniqueName(prefix: string): string {
  counter += 1;
  return `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter}`.slice(0, 32);
}

export interface TestUser {
  id: string;
  username: string;
}

/** Registers a user (registrations are limited per address: tests share a few users). */
export async function register(prefix: string): Promise<TestUser> {
  const cs = new ChatSphere({ baseUrl, WebSocket: NodeWebSocket });
  const username = uniqueName(prefix);
  const user = await cs.register({ username, email: `${username}@example.com`, password: PASSWORD });
  return { id: user.id, username };
}

/** A new login of `user`: a client of its own, with its own session. */
export async function signIn(
  user: TestUser,
  options: Partial<ChatSphereOptions> = {},
): Promise<ChatSphere> {
  const cs = new ChatSphere({ baseUrl, WebSocket: NodeWebSocket, ...options });
  await cs.login(user.username, PASSWORD);
  return cs;
}

const PASSWORD = "correct horse";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** A gateway of the test's own, on a free port, that the test may kill. */
export class Gateway {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  static async start(env: Record<string, string> = {}): Promise<Gateway> {
    const port = await freePort();
    const child = spawn(gatewayBin, [], {
      cwd: repoRoot,
      env: { ...process.env, PORT: String(port), RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const gw = new Gateway(port, child);
    await eventually(async () => (await fetch(`${gw.http}/health`)).ok, 30_000);
    return gw;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** SIGKILL: no close frames, no goodbyes. */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGKILL");
    await exited;
  }
}

/** Polls `check` until it returns true (or throws after `timeoutMs`). */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`condition not met within ${timeoutMs} ms${last ? `: ${String(last)}` : ""}`);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
