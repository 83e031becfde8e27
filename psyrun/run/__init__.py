"""The run machinery: how a task's jobs are planned, run, watched and retried.

``runner`` holds the rules of ``psy run``, ``status``, ``kill`` and ``clean``;
``defaults`` names the backend and scheduler a task gets; ``versions`` and
``snapshot`` pin the code and the rows a run evaluates; ``lease`` keeps an
assignment out of two live jobs; ``walltime``, ``attempts``, ``row_guard``,
``fail_fast``, ``row_timeout`` and ``failures`` decide what a job does when
time, memory or rows run out or fail; ``watch`` follows a run as it goes.
The job's entry point stays :mod:`psyrun.worker` (job scripts name it).
"""
