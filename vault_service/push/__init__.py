"""The push of resolved monitor configs to engines (go-control-plane style): ``follower`` reads the change log,
``location_state`` computes what every engine of a location should hold, ``stream`` only relays it."""
