"""Dashboards: reports and metrics for marketers and managers (see issue: dashboards)."""
