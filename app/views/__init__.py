"""Where requests enter: one blueprint per endpoint family."""
