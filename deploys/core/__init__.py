"""The pure core: settings, worker types, plan, routing, rendering, drift. Never imports pyinfra;
it may use the standard-library rules in ``deploys.host`` that the host program shares."""
