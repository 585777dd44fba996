"""Whether a job may run at this site.

Its signature, binding, the site's rules and policy, approvals, limits and what may be released.
"""
