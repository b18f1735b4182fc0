#!/bin/sh
# One-shot MinIO set-up for the compose stack: the bucket, then one user per service with
# the policy of the same name (deploy/minio/<user>.json). Idempotent: re-running updates
# the policies and secrets and leaves each user attached to its policy.
set -eu
mc alias set local http://minio:9000 "$S3_ROOT_USER" "$S3_ROOT_PASSWORD"
mc mb --ignore-existing local/driftloop
for user in dagster serving mlflow; do
  secret=$(printenv "$(echo "$user" | tr a-z A-Z)_S3_SECRET_KEY")
  mc admin policy create local "driftloop-$user" "/policies/$user.json"
  mc admin user add local "$user" "$secret"
  if ! mc admin policy entities local --user "$user" | grep -q "driftloop-$user"; then
    mc admin policy attach local "driftloop-$user" --user "$user"
  fi
done
