"""Model files on the device: verified download, the current/previous pointers, updates."""
