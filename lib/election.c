/*
 * Candidate role and vote handling (hashicorp raft.go runCandidate,
 * electSelf, requestVote, requestPreVote; Raft §5.2, thesis §9.6 pre-vote).
 */
#include <stdlib.h>
#include <string.h>

#include "lib/configuration.h"
#include "lib/raft.h"

static void *vote_thread_main(void *arg)
{
    craft__vote_thread_t *vt = arg;
    craft_t *r = vt->r;
    craft__set_craft_thread(r);
    craft__vote_msg_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        atomic_store(&vt->finished, true);
        return NULL;
    }
    m->msg.type = vt->timeout_now ? CRAFT__RUN_TIMEOUT_NOW : CRAFT__RUN_VOTE;
    m->round = vt->round;
    m->prevote = vt->prevote;
    m->id = strdup(vt->id);
    if (vt->timeout_now) {
        craft_timeout_now_req_t req;
        craft_timeout_now_resp_t resp;
        memset(&req, 0, sizeof req);
        memset(&resp, 0, sizeof resp);
        craft__header(r, &req.header);
        m->err = r->trans->timeout_now != NULL
                     ? r->trans->timeout_now(r->trans->ctx, vt->id, vt->addr, &req, &resp)
                     : CRAFT_ENOTSUP;
    } else if (vt->prevote) {
        craft_request_prevote_resp_t resp;
        memset(&resp, 0, sizeof resp);
        m->err = r->trans->request_prevote(r->trans->ctx, vt->id, vt->addr, &vt->prereq, &resp);
        m->term = resp.term;
        m->granted = resp.granted;
    } else {
        craft_request_vote_resp_t resp;
        memset(&resp, 0, sizeof resp);
        m->err = r->trans->request_vote(r->trans->ctx, vt->id, vt->addr, &vt->req, &resp);
        m->term = resp.term;
        m->granted = resp.granted;
    }
    if (vt->timeout_now) {
        /* reported as is */
    } else if (vt->prevote && m->err == CRAFT_ENOTSUP) {
        /* The peer's protocol has no pre-vote (hashicorp < 1.7 closes the
         * connection on rpc type 4): count it as granted, as hashicorp does
         * for "unexpected command"; the real vote still decides. */
        m->err = 0;
        m->granted = true;
        m->term = 0;
    } else if (m->err != 0) {
        m->granted = false;
        m->term = 0;
    }
    if (craft__mailbox_post(&r->run_mb, &m->msg) != 0) {
        free(m->id);
        free(m);
    }
    atomic_store(&vt->finished, true);
    return NULL;
}

static void vote_thread_free(craft__vote_thread_t *vt)
{
    free(vt->id);
    free(vt->addr);
    free(vt);
}

void craft__reap_vote_threads(craft_t *r, bool wait_all)
{
    craft__queue_t *e = r->vote_threads.next;
    while (e != &r->vote_threads) {
        craft__vote_thread_t *vt = CRAFT__QUEUE_DATA(e, craft__vote_thread_t, link);
        e = e->next;
        if (wait_all || atomic_load(&vt->finished)) {
            craft__thread_join(&vt->thread);
            craft__queue_remove(&vt->link);
            vote_thread_free(vt);
        }
    }
}

int craft__send_timeout_now(craft_t *r, const char *id, const char *addr)
{
    craft__vote_thread_t *vt = calloc(1, sizeof *vt);
    if (vt == NULL) {
        return CRAFT_ENOMEM;
    }
    vt->r = r;
    vt->timeout_now = true;
    vt->id = strdup(id);
    vt->addr = strdup(addr);
    atomic_init(&vt->finished, false);
    if (vt->id == NULL || vt->addr == NULL ||
        craft__thread_start(&vt->thread, "craft-timeout", vote_thread_main, vt) != 0) {
        vote_thread_free(vt);
        return CRAFT_ENOMEM;
    }
    craft__queue_push(&r->vote_threads, &vt->link);
    return 0;
}

/* Starts a (pre-)election round: persists the new term and self-vote for a
 * real election, then asks every other voter of the latest configuration. */
static void start_round(craft_t *r, bool prevote)
{
    craft__candidate_t *c = &r->cand;
    c->round++;
    c->prevote = prevote;
    c->granted = 0;
    c->refused = 0;
    c->needed = craft__configuration_voters(&r->latest) / 2 + 1;
    c->deadline_ns = craft__now_ns() + craft__random_timeout_ns(atomic_load(&r->et_ms));
    uint64_t term = atomic_load(&r->current_term) + 1;
    if (!prevote) {
        if (craft__set_current_term(r, term) != 0) {
            atomic_store(&r->shutting_down, true);
            return;
        }
        /* Vote for ourselves, durably, before asking anyone. */
        int rv = r->stable->set_uint64(r->stable->ctx, CRAFT__KEY_LAST_VOTE_TERM, term);
        if (rv == 0) {
            rv = r->stable->set(r->stable->ctx, CRAFT__KEY_LAST_VOTE_CAND, r->local_addr,
                                strlen(r->local_addr));
        }
        if (rv != 0) {
            CRAFT__ERROR(&r->log, "raft", "failed to persist vote: error=%s", craft_strerror(rv));
            atomic_store(&r->shutting_down, true);
            return;
        }
        r->last_vote_term = term;
        free(r->last_vote_cand);
        r->last_vote_cand = strdup(r->local_addr);
        atomic_fetch_add(&r->st_elections, 1);
        CRAFT__INFO(&r->log, "raft", "starting election: term=%llu%s", (unsigned long long)term,
                    c->transfer ? " (leadership transfer)" : "");
    } else {
        atomic_fetch_add(&r->st_prevotes, 1);
        CRAFT__INFO(&r->log, "raft", "starting pre-vote: term=%llu", (unsigned long long)term);
    }
    if (craft__configuration_is_voter(&r->latest, r->local_id)) {
        c->granted = 1;
    }
    for (size_t i = 0; i < r->latest.n; i++) {
        const craft_server_t *s = &r->latest.servers[i];
        if (s->suffrage != CRAFT_VOTER || strcmp(s->id, r->local_id) == 0) {
            continue;
        }
        craft__vote_thread_t *vt = calloc(1, sizeof *vt);
        if (vt == NULL) {
            continue;
        }
        vt->r = r;
        vt->prevote = prevote;
        vt->round = c->round;
        vt->id = strdup(s->id);
        vt->addr = strdup(s->address);
        atomic_init(&vt->finished, false);
        if (vt->id == NULL || vt->addr == NULL) {
            vote_thread_free(vt);
            continue;
        }
        uint64_t last_index = atomic_load(&r->last_log_index);
        uint64_t last_term = atomic_load(&r->last_log_term);
        if (prevote) {
            craft__header(r, &vt->prereq.header);
            vt->prereq.term = term;
            vt->prereq.last_log_index = last_index;
            vt->prereq.last_log_term = last_term;
        } else {
            craft__header(r, &vt->req.header);
            vt->req.term = term;
            vt->req.candidate = r->local_addr;
            vt->req.last_log_index = last_index;
            vt->req.last_log_term = last_term;
            vt->req.leadership_transfer = c->transfer;
        }
        if (craft__thread_start(&vt->thread, "craft-vote", vote_thread_main, vt) != 0) {
            vote_thread_free(vt);
            continue;
        }
        craft__queue_push(&r->vote_threads, &vt->link);
    }
}

static bool use_prevote(craft_t *r)
{
    return !r->conf.prevote_disabled && r->trans->request_prevote != NULL && !r->cand.transfer;
}

/* Checks the tally; returns true when the role changed or a new round
 * started. */
static void tally(craft_t *r)
{
    craft__candidate_t *c = &r->cand;
    if (c->granted >= c->needed) {
        if (c->prevote) {
            CRAFT__INFO(&r->log, "raft", "pre-vote successful, starting election: tally=%zu",
                        c->granted);
            start_round(r, false);
            tally(r);
        } else {
            CRAFT__INFO(&r->log, "raft", "election won: term=%llu tally=%zu",
                        (unsigned long long)atomic_load(&r->current_term), c->granted);
            craft__set_state(r, CRAFT_LEADER);
        }
    } else if (c->prevote && c->refused >= c->needed) {
        /* Wait for the round timer before trying again. */
        CRAFT__DEBUG(&r->log, "raft", "pre-vote campaign failed: refused=%zu", c->refused);
    }
}

void craft__candidate_loop(craft_t *r)
{
    r->cand.transfer = r->candidate_from_transfer;
    r->candidate_from_transfer = false;
    craft__set_leader(r, NULL, NULL);
    start_round(r, use_prevote(r));
    tally(r);
    while (atomic_load(&r->state) == CRAFT_CANDIDATE && !atomic_load(&r->shutting_down)) {
        craft__msg_t *m = craft__mailbox_wait(&r->run_mb, r->cand.deadline_ns);
        if (m == NULL) {
            if (craft__now_ns() >= r->cand.deadline_ns) {
                CRAFT__WARN(&r->log, "raft", "election timeout reached, restarting election");
                r->cand.transfer = false;
                start_round(r, use_prevote(r));
                tally(r);
            }
            continue;
        }
        if (m->type == CRAFT__RUN_RELOAD) {
            r->cand.deadline_ns =
                craft__now_ns() + craft__random_timeout_ns(atomic_load(&r->et_ms));
            craft__handle_common(r, m);
        } else if (m->type == CRAFT__RUN_VOTE) {
            craft__vote_msg_t *v = (craft__vote_msg_t *)m;
            if (v->term > atomic_load(&r->current_term)) {
                CRAFT__DEBUG(&r->log, "raft", "newer term discovered, fallback to follower: "
                             "term=%llu", (unsigned long long)v->term);
                craft__step_down(r, v->term);
            } else if (v->round == r->cand.round) {
                if (v->granted) {
                    r->cand.granted++;
                } else {
                    r->cand.refused++;
                }
                tally(r);
            }
            free(v->id);
            free(v);
        } else {
            craft__handle_common(r, m);
        }
        craft__reap_vote_threads(r, false);
    }
}

/* Common refusals of hashicorp's requestVote rules (1) and (2). Rule (2)
 * ("we have a leader") only holds while that leader is alive: a vote is
 * refused within heartbeat_timeout of its last contact (Raft thesis §4.2.3,
 * disruptive servers). hashicorp refuses for as long as it remembers the
 * leader, which makes the first candidate after a leader crash lose a whole
 * election timeout on followers whose own timer has not fired yet. */
static const char *refuse_candidate(craft_t *r, const char *id, const char *addr,
                                    bool transfer)
{
    if (id != NULL && id[0] != '\0' && r->latest.n > 0 &&
        craft__configuration_find(&r->latest, id) < 0) {
        return "candidate is not in the configuration";
    }
    if (transfer) {
        return NULL;
    }
    const char *why = NULL;
    int64_t ht = CRAFT__MS(atomic_load(&r->ht_ms));
    craft__mutex_lock(&r->mu);
    bool is_leader = atomic_load(&r->state) == CRAFT_LEADER;
    if (r->leader_addr != NULL && (addr == NULL || strcmp(r->leader_addr, addr) != 0) &&
        (is_leader || craft__now_ns() - atomic_load(&r->last_contact_ns) < ht)) {
        why = "we have a leader";
    }
    craft__mutex_unlock(&r->mu);
    return why;
}

static bool log_up_to_date(craft_t *r, uint64_t last_index, uint64_t last_term)
{
    uint64_t our_term = atomic_load(&r->last_log_term);
    uint64_t our_index = atomic_load(&r->last_log_index);
    if (our_term > last_term) {
        return false;
    }
    if (our_term == last_term && our_index > last_index) {
        return false;
    }
    return true;
}

void craft__handle_request_vote(craft_t *r, craft_rpc_t *rpc)
{
    const craft_request_vote_req_t *req = &rpc->req.request_vote;
    craft_request_vote_resp_t *resp = &rpc->resp.request_vote;
    memset(resp, 0, sizeof *resp);
    craft__header(r, &resp->header);
    resp->term = atomic_load(&r->current_term);
    resp->granted = false;
    const char *cand = req->candidate != NULL && req->candidate[0] != '\0' ? req->candidate
                                                                           : req->header.addr;
    craft_observation_t o = {.kind = CRAFT_OBSERVE_REQUEST_VOTE,
                             .candidate_id = req->header.id,
                             .candidate_address = cand,
                             .term = req->term,
                             .last_log_index = req->last_log_index,
                             .last_log_term = req->last_log_term,
                             .leadership_transfer = req->leadership_transfer};
    craft__observe(r, &o);
    const char *why = refuse_candidate(r, req->header.id, cand, req->leadership_transfer);
    if (why != NULL) {
        CRAFT__WARN(&r->log, "raft", "rejecting vote request since %s: candidate=%s term=%llu",
                    why, cand ? cand : "", (unsigned long long)req->term);
        goto out;
    }
    if (req->term < atomic_load(&r->current_term)) {
        goto out;
    }
    if (req->term > atomic_load(&r->current_term)) {
        CRAFT__DEBUG(&r->log, "raft", "lost leadership because received a requestVote with a "
                     "newer term");
        craft__step_down(r, req->term);
        resp->term = req->term;
    }
    /* hashicorp #526: refuse non-voters after adopting their term. */
    if (req->header.id != NULL && req->header.id[0] != '\0' && r->latest.n > 0 &&
        !craft__configuration_is_voter(&r->latest, req->header.id)) {
        CRAFT__WARN(&r->log, "raft", "rejecting vote request since node is not a voter: %s",
                    req->header.id);
        goto out;
    }
    if (cand == NULL) {
        goto out;
    }
    if (r->last_vote_term == req->term && r->last_vote_cand != NULL) {
        if (strcmp(r->last_vote_cand, cand) == 0) {
            CRAFT__WARN(&r->log, "raft", "duplicate requestVote for same term: term=%llu",
                        (unsigned long long)req->term);
            resp->granted = true;
        }
        goto out;
    }
    if (!log_up_to_date(r, req->last_log_index, req->last_log_term)) {
        CRAFT__WARN(&r->log, "raft", "rejecting vote request since our log is more up to date: "
                    "candidate=%s", cand);
        goto out;
    }
    /* Persist the vote before granting it (Raft §5.2). */
    int rv = r->stable->set_uint64(r->stable->ctx, CRAFT__KEY_LAST_VOTE_TERM, req->term);
    if (rv == 0) {
        rv = r->stable->set(r->stable->ctx, CRAFT__KEY_LAST_VOTE_CAND, cand, strlen(cand));
    }
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to persist vote: error=%s", craft_strerror(rv));
        goto out;
    }
    r->last_vote_term = req->term;
    free(r->last_vote_cand);
    r->last_vote_cand = strdup(cand);
    resp->granted = true;
    atomic_store(&r->last_contact_ns, craft__now_ns());
out:
    rpc->respond(rpc, 0);
}

void craft__handle_request_prevote(craft_t *r, craft_rpc_t *rpc)
{
    const craft_request_prevote_req_t *req = &rpc->req.request_prevote;
    craft_request_prevote_resp_t *resp = &rpc->resp.request_prevote;
    memset(resp, 0, sizeof *resp);
    craft__header(r, &resp->header);
    resp->term = atomic_load(&r->current_term);
    resp->granted = false;
    craft_observation_t o = {.kind = CRAFT_OBSERVE_REQUEST_PREVOTE,
                             .candidate_id = req->header.id,
                             .candidate_address = req->header.addr,
                             .term = req->term,
                             .last_log_index = req->last_log_index,
                             .last_log_term = req->last_log_term};
    craft__observe(r, &o);
    /* A pre-vote never persists anything and never touches last contact. */
    const char *why = refuse_candidate(r, req->header.id, req->header.addr, false);
    if (why != NULL) {
        CRAFT__DEBUG(&r->log, "raft", "rejecting pre-vote request since %s", why);
        goto out;
    }
    if (req->term < atomic_load(&r->current_term)) {
        goto out;
    }
    if (req->header.id != NULL && req->header.id[0] != '\0' && r->latest.n > 0 &&
        !craft__configuration_is_voter(&r->latest, req->header.id)) {
        goto out;
    }
    if (!log_up_to_date(r, req->last_log_index, req->last_log_term)) {
        goto out;
    }
    resp->granted = true;
out:
    rpc->respond(rpc, 0);
}

void craft__handle_timeout_now(craft_t *r, craft_rpc_t *rpc)
{
    memset(&rpc->resp.timeout_now, 0, sizeof rpc->resp.timeout_now);
    if (!craft__configuration_is_voter(&r->latest, r->local_id)) {
        CRAFT__WARN(&r->log, "raft", "ignoring TimeoutNow: not a voter");
        rpc->respond(rpc, CRAFT_ENOTVOTER);
        return;
    }
    CRAFT__INFO(&r->log, "raft", "received TimeoutNow, starting election now");
    craft__set_leader(r, NULL, NULL);
    r->candidate_from_transfer = true;
    craft__set_state(r, CRAFT_CANDIDATE);
    rpc->respond(rpc, 0);
}
