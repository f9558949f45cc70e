"""Drives a real Python analytics SDK against the gateway: the six call types (or PostHog's
equivalents), then a flush. Prints one JSON line {"errors": [...]}; exits 1 on any delivery error.

usage: sdk.py segment|rudder|posthog|posthog-v1 HOST KEY RUN [COMPRESSION]
"""
import json
import sys

which, host, key, run = sys.argv[1:5]
compression = sys.argv[5] if len(sys.argv) > 5 else None
errors = []


def on_error(e, batch):
    errors.append(f"{type(e).__name__}: {e} ({len(batch)} messages)")


PROPS = {"plan": "pro", "amount": 42.5, "tags": ["a", "b"], "nested": {"k": "v"}, "unicode": "héllo ✓"}
TRAITS = {"email": "jane@example.com", "name": "Jane Doe", "plan": "pro", "logins": 7}
# An hour ago: the test finds the track call at this time.
import datetime
TS_DT = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
TS = TS_DT.isoformat()
user = f"u_{which}_{run}"

if which in ("segment", "rudder"):
    if which == "segment":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    c = Client(write_key=key, host=host, on_error=on_error, max_retries=3, upload_interval=0.1,
               gzip=(compression == "gzip") if which == "segment" else True)
    c.track(user_id=user, event="Order Completed", properties=PROPS, anonymous_id=f"anon_{run}",
            context={"ip": "203.0.113.7", "sessionId": f"sess_{run}"},
            integrations={"All": True, "Mixpanel": False},
            timestamp=TS_DT,
            message_id=f"msg-{which}-track-{run}")
    c.identify(user_id=user, traits=TRAITS, anonymous_id=f"anon_{run}")
    c.page(user_id=user, category="Docs", name="Getting Started",
           properties={"url": "https://example.com/docs", "title": "Docs"})
    c.screen(user_id=user, name="Home", properties={"variant": "dark"})
    c.group(user_id=user, group_id=f"g_{run}", traits={"name": "Acme Inc", "employees": 120})
    c.alias(previous_id=f"prev_{run}", user_id=user)
    c.flush()
    c.join()
else:
    from posthog import Posthog
    kwargs = {}
    if which == "posthog-v1":
        kwargs["capture_mode"] = "v1"
        if compression:
            kwargs["capture_compression"] = compression
    elif compression == "gzip":
        kwargs["gzip"] = True
    p = Posthog(key, host=host, on_error=on_error, max_retries=3, flush_interval=0.1, **kwargs)
    p.capture("Order Completed", distinct_id=user,
              properties={**PROPS, "$session_id": f"sess_{run}", "$current_url": "https://example.com/checkout"},
              timestamp=TS, uuid="01890000-0000-7000-8000-" + run[-12:].rjust(12, "0"))
    p.capture("$pageview", distinct_id=user, properties={"$current_url": "https://example.com/docs"})
    p.set(distinct_id=user, properties=TRAITS)
    p.set_once(distinct_id=user, properties={"first_seen": "2024-01-01"})
    p.alias(previous_id=f"prev_{run}", distinct_id=user)
    p.group_identify("company", f"g_{run}", {"name": "Acme Inc", "employees": 120}, distinct_id=user)
    p.capture("Group Event", distinct_id=user, groups={"company": f"g_{run}"})
    p.flush()
    p.shutdown()

print(json.dumps({"errors": errors}))
sys.exit(1 if errors else 0)
