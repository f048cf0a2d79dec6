import { lapseFor, refused, signedInUser } from "../../../lib/lapse";

/** `POST /api/study-sessions`: a new study room, hosted by the signed-in user. */
export async function POST(req: Request): Promise<Response> {
  const user = signedInUser(req);
  if (!user) return Response.json({ error: "unauthorized" }, { status: 401 });
  const { title = "" } = (await req.json().catch(() => ({}))) as { title?: string };
  try {
    const session = await lapseFor(user).createSession({ kind: "study", title });
    return Response.json({ id: session.id, status: session.status }, { status: 201 });
  } catch (e) {
    return refused(e);
  }
}
