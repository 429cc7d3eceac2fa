// session-reaper: an OpenCode plugin (`session-reaper install --agent opencode` writes it, `uninstall` removes it).
// OpenCode runs no hook commands and fires no end event. At `session.created` this runs session-reaper's hook with a
// SessionStart payload (the session id and directory); the sentinel that hook starts ends the session when OpenCode
// exits, and stops what its tools left behind. Commands of the shell tool get SESSION_REAPER_SESSION_ID (the id of
// the session, or of its root for a subagent's), which names their session to session-reaper.
import { spawnSync } from "node:child_process";

const COMMAND = "session-reaper hook --agent opencode";

export const SessionReaper = async ({ directory }) => {
  const roots = new Map();
  const rootOf = (id) => roots.get(id) ?? id;
  return {
    event: async ({ event }) => {
      if (event.type !== "session.created") return;
      const info = event.properties?.info ?? {};
      const id = info.id ?? event.properties?.sessionID;
      if (!id) return;
      if (info.parentID) {
        roots.set(id, rootOf(info.parentID));
        return;
      }
      const payload = {
        hook_event_name: "SessionStart",
        session_id: id,
        cwd: info.directory ?? directory,
        source: "startup",
      };
      spawnSync("/bin/sh", ["-c", COMMAND], {
        input: JSON.stringify(payload),
        stdio: ["pipe", "ignore", "ignore"],
        timeout: 5000,
      });
    },
    "shell.env": async (input, output) => {
      if (input?.sessionID) output.env.SESSION_REAPER_SESSION_ID = rootOf(input.sessionID);
    },
  };
};
