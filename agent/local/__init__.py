"""What the site's own staff use.

The local control API, resource probes, self-checks and the CLI commands.
"""
