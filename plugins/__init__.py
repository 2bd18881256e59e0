"""ngxsim's first-party modules (installed as ``ngxsim_plugins``; load them by name with
``load_module worker_events;``)."""
