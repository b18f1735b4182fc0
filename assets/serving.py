"""What the serving endpoint reports back to Dagster: the admin plane's audit trail.

Serving writes it (`driftloop.audit`); Dagster does not produce it, so it is an external
asset, observed by `audit_sensor`: each admin action or refused attempt is one observation
on the asset's page, with who (role, key id, client), what and the outcome.
"""

import dagster as dg

serving_admin_audit = dg.AssetSpec(
    "serving_admin_audit",
    group_name="serving",
    kinds={"ray"},
    description=(
        "Admin actions and refused attempts on the serving endpoint (routing, rollback, "
        "reload, state): time, role, key id (never the key), client, before/after, outcome."
    ),
)
