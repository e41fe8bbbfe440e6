-- Signing out of the dashboard ends every session of that key issued
-- before this moment (ms since the epoch).
ALTER TABLE api_keys ADD COLUMN sessions_not_before INTEGER NOT NULL DEFAULT 0;
