"""ezipc_adapters: drivers of ezipc_proto over real transports (work in progress)."""
