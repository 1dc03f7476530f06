"""The Management API (people, dashboard, automation), one module per resource."""
