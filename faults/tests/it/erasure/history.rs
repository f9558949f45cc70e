//! The history the erasure works on: the victim's and the bystanders' events in several months,
//! quarantined rows, a dead letter and events still to post.

use super::*;

/// The UTC midnights of [`DAYS`] in each month of `months`.
pub(super) fn days_of(months: &[Month]) -> Vec<DateTime<Utc>> {
    months
        .iter()
        .flat_map(|m| DAYS.map(|d| m.start() + chrono::Duration::days(d)))
        .collect()
}

/// `n` events of `user` in `app`, spread over `days` (through each day), the [`NAMES`] and eight
/// sessions of the user's own, in one server-side statement.
pub(super) async fn load(c: &Client, app: &str, user: &str, n: i64, days: &[DateTime<Utc>]) {
    let names = NAMES.map(str::to_owned).to_vec();
    c.execute(
        "INSERT INTO analytics_events \
           (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), $1, n[1 + (g / cardinality(d)) % cardinality(n)], \
                d[1 + g % cardinality(d)] + make_interval(secs => g % 86400), now(), $2, \
                $2 || '-s' || (g / (cardinality(d) * cardinality(n))) % 8 \
           FROM (SELECT $3::timestamptz[] AS d, $4::text[] AS n) p, \
                generate_series(0, $5::bigint - 1) g",
        &[&app, &user, &days, &names, &n],
    )
    .await
    .expect("load history");
}

/// `n` quarantined events of `user` in `app` at `at`.
pub(super) async fn quarantine(c: &Client, app: &str, user: &str, n: i64, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO events_quarantine \
           (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         SELECT gen_random_uuid(), $1, 'view', t + make_interval(mins => g::int), now(), $2 \
           FROM (SELECT $3::timestamptz AS t) p, generate_series(1, $4::bigint) g",
        &[&app, &user, &at, &n],
    )
    .await
    .expect("quarantine");
}

/// A dead letter of one event of `user` in `app`, as the writer stores it.
pub(super) async fn dead_letter(c: &Client, app: &str, user: &str) {
    let e = testkit::view_event(app, user);
    let payload = shared::queue::encode(std::slice::from_ref(&e)).expect("encode");
    c.execute(
        "INSERT INTO dead_letters (event_id, app_id, payload, error, stream, entry_id, deliveries) \
         VALUES ($1, $2, $3, 'refused', 'stream', gen_random_uuid()::text, 3)",
        &[&e.event_id, &app, &payload],
    )
    .await
    .expect("dead letter");
}

/// [`POSTED`] events of `user` with ids of their own, on the history's days and names of `month`.
pub(super) fn posted(user: &str, month: Month) -> (Vec<Uuid>, Value) {
    let days = days_of(&[month]);
    let ids: Vec<Uuid> = (0..POSTED).map(|_| Uuid::new_v4()).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let at = days[i % days.len()] + chrono::Duration::minutes(i as i64 + 60);
            json!({
                "event_id": id,
                "event_name": NAMES[(i / days.len()) % NAMES.len()],
                "timestamp": at.to_rfc3339(),
                "user_id": user,
                "session_id": format!("{user}-s{}", i % 8),
            })
        })
        .collect();
    (ids, Value::Array(events))
}

/// The apps and keys, and what was stored before the daemons started.
pub(super) struct Before {
    pub(super) app: String,
    pub(super) app2: String,
    pub(super) admin: String,
    pub(super) ingest: String,
    pub(super) bystander: [i64; 3],
    pub(super) second: [i64; 3],
    pub(super) summary: Vec<SummaryRow>,
    pub(super) summary2: Vec<SummaryRow>,
}

/// Two apps and an admin key of the first, their history ([`load_history`]), then one fold, so
/// the summary holds the history.
pub(super) async fn prepare(w: &World, months: &[Month]) -> Before {
    let app = &w.cli("ingest-gateway", &["apps", "create", "--name", "x"])[0];
    let other = &w.cli("ingest-gateway", &["apps", "create", "--name", "y"])[0];
    let text = |v: &Value, k: &str| v[k].as_str().expect(k).to_owned();
    let (a1, a2) = (text(app, "app_id"), text(other, "app_id"));
    let admin = &w.cli(
        "ingest-gateway",
        &["keys", "create", "--app", &a1, "--kind", "admin"],
    )[0];
    load_history(w, &a1, &a2, months).await;
    w.cli(
        "maintenance-worker",
        &["run-once", "--no-create-partitions", "--no-analyze"],
    );
    let members = (months.len() * DAYS.len() * NAMES.len()) as i64;
    let victim = rows_of(w, &a1, VICTIM).await;
    assert_eq!(victim, [VICTIM_HISTORY, QUARANTINED, members]);
    let summary = w.summary(&a1).await;
    assert!(summary.iter().all(|r| r.3 == 2), "{summary:?}");
    Before {
        bystander: rows_of(w, &a1, BYSTANDER).await,
        second: rows_of(w, &a2, VICTIM).await,
        summary,
        summary2: w.summary(&a2).await,
        admin: text(admin, "key"),
        ingest: text(app, "ingest_key"),
        app: a1,
        app2: a2,
    }
}

/// The victim's history, the bystander's on the same days, the victim of the second app;
/// quarantined rows and one dead letter of each.
pub(super) async fn load_history(w: &World, a1: &str, a2: &str, months: &[Month]) {
    let days = days_of(months);
    load(&w.c, a1, VICTIM, VICTIM_HISTORY, &days).await;
    load(&w.c, a1, BYSTANDER, BYSTANDER_HISTORY, &days).await;
    load(&w.c, a2, VICTIM, SECOND_APP_HISTORY, &days).await;
    // Months without a partition (the daemon makes them 6 months ahead): the partitions job
    // cannot move these rows into `analytics_events`, so the quarantine pass finds all 50.
    let now = Month::of(Utc::now());
    for (plus, n) in [(8, QUARANTINED / 2), (9, QUARANTINED - QUARANTINED / 2)] {
        quarantine(&w.c, a1, VICTIM, n, now.plus(plus).start()).await;
    }
    quarantine(&w.c, a1, BYSTANDER, 5, now.plus(9).start()).await;
    quarantine(&w.c, a2, VICTIM, 5, now.plus(9).start()).await;
    for (a, u) in [(a1, VICTIM), (a1, BYSTANDER), (a2, VICTIM)] {
        dead_letter(&w.c, a, u).await;
    }
}
