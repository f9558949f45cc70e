-- Key changes are pushed to every gateway: each insert, revocation or deletion of a key sends
-- NOTIFY sluice_api_keys with the key's digest (hex), delivered when the change commits. Gateways
-- LISTEN and re-read that one key; their periodic reload stays as the safety net.
CREATE FUNCTION sluice_notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('sluice_api_keys', encode(OLD.key_hash, 'hex'));
  ELSE
    PERFORM pg_notify('sluice_api_keys', encode(NEW.key_hash, 'hex'));
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION sluice_notify_key_change();

-- A change to an app's rate limit concerns every key of the app.
CREATE FUNCTION sluice_notify_app_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('sluice_api_keys', encode(k.key_hash, 'hex'))
     FROM api_keys k WHERE k.app_id = NEW.app_id;
  RETURN NULL;
END $$;

CREATE TRIGGER apps_notify AFTER UPDATE OF rate_limit_events_per_sec ON apps
  FOR EACH ROW EXECUTE FUNCTION sluice_notify_app_change();
