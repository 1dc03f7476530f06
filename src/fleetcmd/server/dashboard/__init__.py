"""The dashboard: server-rendered pages under `/app` on the Management API port, with the
API's login and RBAC. Pages read the fleet through the indexer like the API routes do, and
every list is paginated server-side so a page costs the same with 100 or 100,000 agents."""

from fleetcmd.server.dashboard.app import create_dashboard_app, mount_dashboard

__all__ = ["create_dashboard_app", "mount_dashboard"]
