"""The privacy audit: memorization, text leakage, PHI, membership inference, DP ledger.

The per-site checks (`site.site_audit`) see a site's real records and return aggregate figures
and the IDs of flagged synthetic records only; `combine.combine` turns the sites' answers and
the steward's own checks into the gate decision. `run.run_audit` runs the same code locally when
one party holds all the data; the Flower query handler (client/query.py) runs it at each site.
"""
