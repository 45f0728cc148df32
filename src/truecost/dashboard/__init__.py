"""Read-only web views over the audit queries: an overview and one request's waterfall."""
