/**
 * `lapse-client/react`: a session's live state and a user's presence as React hooks, under a
 * `<LapseProvider client={lapse}>`. React is a peer dependency of this entry point only.
 */
import { createContext, createElement, type ReactNode, useContext, useEffect, useState } from "react";

import type { Session } from "./client.js";
import { LapseError } from "./errors.js";
import type { Lapse } from "./index.js";
import type { PresenceState } from "./presence.js";

const LapseContext = createContext<Lapse | null>(null);

/** Makes `client` the lapse the hooks below talk to. */
export function LapseProvider({ client, children }: { client: Lapse; children?: ReactNode }) {
  return createElement(LapseContext.Provider, { value: client }, children);
}

function useLapse(): Lapse {
  const lapse = useContext(LapseContext);
  if (!lapse) throw new Error("lapse-client/react: wrap the tree in <LapseProvider client={lapse}>");
  return lapse;
}

export interface LiveSession {
  /** The session as lapse last said it was (undefined until the first answer). */
  session: Session | undefined;
  /** Why it cannot be shown: `not_found` once it is deleted, say. */
  error: LapseError | undefined;
}

/**
 * The session `id`, kept current: read once, then read again after each of its events on the
 * stream (a burst of events costs one read).
 */
export function useSession(id: string): LiveSession {
  const lapse = useLapse();
  const [live, setLive] = useState<LiveSession>({ session: undefined, error: undefined });
  useEffect(() => {
    const stop = new AbortController();
    let reading: Promise<void> | undefined;
    let again = false;
    const read = () => {
      if (reading) {
        again = true;
        return;
      }
      reading = lapse
        .getSession(id)
        .then(
          (session) => {
            if (!stop.signal.aborted) setLive({ session, error: undefined });
          },
          (error: unknown) => {
            if (stop.signal.aborted) return;
            if (error instanceof LapseError) setLive((l) => ({ session: l.session, error }));
          },
        )
        .finally(() => {
          reading = undefined;
          if (again && !stop.signal.aborted) {
            again = false;
            read();
          }
        });
    };
    read();
    void (async () => {
      try {
        for await (const _event of lapse.streamEvents({ session: id, signal: stop.signal })) read();
      } catch {
        // Aborted on unmount, or refused (the error shows through the next read).
      }
    })();
    return () => stop.abort();
  }, [lapse, id]);
  return live;
}

/**
 * Keeps `user` present in session `id` while the component is mounted (see
 * `Lapse.presence`); returns `online`, `offline` or `ended` (undefined before the first beat).
 */
export function usePresence(id: string, user: string, options: { every?: string | number } = {}): PresenceState | undefined {
  const lapse = useLapse();
  const [state, setState] = useState<PresenceState | undefined>(undefined);
  const every = options.every;
  useEffect(() => {
    const presence = lapse.presence(id, user, { every, onChange: setState });
    return () => presence.stop();
  }, [lapse, id, user, every]);
  return state;
}
