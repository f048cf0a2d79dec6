/**
 * Seed 000's cleanup cron, kept as a caller: Vercel Cron calls this function on the schedule
 * in `vercel.json` with `Authorization: Bearer $CRON_SECRET`, and it asks lapse to sweep with
 * the same secret (lapse takes the cron secret on `/v1/sweep` only). Needed only when lapse
 * runs with `[sweeper] mode = "schedule"`, or to keep the seed's rhythm; the continuous
 * sweeper applies every rule at its deadline without it.
 *
 * Drop it into a Vercel project as `api/cron/lapse-sweep.ts` (or, in a Next.js app, as
 * `app/api/cron/lapse-sweep/route.ts`), with `LAPSE_URL` and `CRON_SECRET` set for the
 * project and `CRON_SECRET` also given to lapse.
 */
export async function GET(request: Request): Promise<Response> {
  const secret = process.env.CRON_SECRET;
  if (!secret || request.headers.get("authorization") !== `Bearer ${secret}`) {
    return Response.json({ error: "unauthorized" }, { status: 401 });
  }
  const lapse = process.env.LAPSE_URL ?? "http://127.0.0.1:7070";
  const answer = await fetch(`${lapse}/v1/sweep`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}` },
  });
  // lapse's report as it is: what was applied, by rule and action, and any errors.
  return new Response(await answer.text(), {
    status: answer.status,
    headers: { "content-type": answer.headers.get("content-type") ?? "application/json" },
  });
}
