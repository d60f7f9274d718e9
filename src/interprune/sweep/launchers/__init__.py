"""Launchers: where a sweep's runs execute (see ``sweep.launch``)."""
