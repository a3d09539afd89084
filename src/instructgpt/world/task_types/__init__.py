"""The task types of the paper's ten use cases, one module per use case.

A task type is a class with ``make``, ``solve`` and ``grade`` registered with
``@task(name, use_case, weight)`` in ``TASKS`` (see ``base.py``). Modules:

===================  =======================================================
``base``             the registry, ``Grade`` and ``CheckResult``
``constraints``      explicit constraints: drawn, stated, kept, checked
``passages``         the source passage of closed-domain tasks
``generation``       describe .35, story .30, note .20, ad .15
``open_qa``          fact_qa (and the fact-question helpers chat and closed QA use)
``chat``             chat_qa .6, chat_rude .2, chat_greet .2
``brainstorming``    list_kind .4, list_filter .6
``classification``   sentiment .4, kind .3, politeness .3
``other``            sort_names .5, count_items .5
``closed_qa``        closed_qa (closed domain, as are the three below)
``summarization``    summarize
``extract``          extract_kind
``rewrite``          rewrite_list .35, rewrite_replace .35, rewrite_polite .30
===================  =======================================================
"""

# Importing a module registers its task types. The order below is the
# registration order of ``TASKS``; within a use case it is the order of
# ``make_prompt``'s weighted draw, so changing it changes every generated
# prompt (tests/world/test_world_digest.py pins it).
from . import (  # noqa: F401, I001
    generation, open_qa, chat, brainstorming, classification, other,
    closed_qa, summarization, extract, rewrite,
)
from .base import TASKS, CheckResult, Grade, task

__all__ = ["TASKS", "CheckResult", "Grade", "task"]
