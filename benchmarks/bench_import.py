"""asv: import time of psyrun, which every job pays."""


def timeraw_import_psyrun():
    return "import psyrun, psyrun.pspace"


def timeraw_import_job():
    return "import psyrun, psyrun.pspace, psyrun.store, psyrun.worker"
