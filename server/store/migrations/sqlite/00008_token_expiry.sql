-- +goose Up
-- Token expiry. expires_at is when a user token stops working; NULL means
-- it never expires. A lookup of an expired token fails with
-- store.ErrTokenExpired, not as an unknown token.
ALTER TABLE tokens ADD COLUMN expires_at TIMESTAMP;

-- +goose Down
ALTER TABLE tokens DROP COLUMN expires_at;
