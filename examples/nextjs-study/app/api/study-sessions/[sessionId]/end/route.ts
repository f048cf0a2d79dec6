import { lapseFor, refused, signedInUser } from "../../../../../lib/lapse";

/**
 * `POST /api/study-sessions/[sessionId]/end`, seed 000's route, its answer unchanged.
 *
 * The seed checked the host, the state, counted notes, flashcards and messages, wrote the
 * session, its participants, a summary and notifications in one Prisma transaction. lapse
 * does all of that in its own transaction (only the host may end, only an open session ends,
 * participants leave, the summary counts what `activity` counted, participants are notified);
 * this route passes the answer on in the shape the seed's pages read.
 */
export async function POST(req: Request, { params }: { params: Promise<{ sessionId: string }> }): Promise<Response> {
  const user = signedInUser(req);
  if (!user) return Response.json({ error: "unauthorized" }, { status: 401 });
  const { sessionId } = await params;
  try {
    const { session, summary } = await lapseFor(user).end(sessionId);
    const counters = summary.counters ?? {};
    return Response.json({
      success: true,
      session: {
        id: session.id,
        status: "COMPLETED",
        endedAt: session.ended_at,
        durationMinutes: summary.duration_minutes,
      },
      summary: {
        participants: summary.participants,
        notes: counters.notes ?? 0,
        flashcards: counters.flashcards ?? 0,
        messages: counters.messages ?? 0,
      },
    });
  } catch (e) {
    return refused(e);
  }
}
