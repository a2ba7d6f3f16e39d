"""Optional integrations with frameworks: each module needs its extra installed."""
