// UCAL annotation page. Plain JavaScript, no dependencies, no build step.
// The server is the only source of truth: the page re-reads its state after
// every action and every second, so a reload or a second tab never diverges.
"use strict";

(function () {
  const TOKEN = new URLSearchParams(window.location.search).get("token") || "";
  const POLL_MS = 1000;
  const PAGE_SIZE = 20;
  const LABELS = { same: "Same person", different: "Different", unsure: "Not sure" };

  const $ = (id) => document.getElementById(id);
  let state = null;      // last state from the server
  let currentId = null;  // id of the pair on screen
  let busy = false;      // an answer is being sent: ignore further keys
  let shownId = null;    // the pair whose display time shownAt holds
  let shownAt = 0;       // when it appeared (performance.now()): an answer's seconds
  let reviewPage = 0;

  function withToken(path) {
    return path + "?token=" + encodeURIComponent(TOKEN);
  }
  function imageUrl(index) {
    return withToken("/img/" + index);
  }

  async function api(name, body) {
    const options = { cache: "no-store" };
    if (body !== undefined) {
      options.method = "POST";
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(withToken("/api/" + name), options);
    } catch (err) {
      throw new Error("Cannot reach UCAL (has the process stopped?). Answers already given are saved.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      throw new Error((data && data.error) || "The server answered " + response.status + ".");
    }
    return data;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // -- oracle mode -------------------------------------------------------

  function pairs() {
    return state && state.batch ? state.batch.pairs : [];
  }
  function positionOf(id) {
    return pairs().findIndex((p) => p.id === id);
  }
  function firstUnanswered(after) {
    const list = pairs();
    const start = after === undefined ? 0 : after + 1;
    for (let k = 0; k < list.length; k++) {
      const pair = list[(start + k) % list.length];
      if (pair.answer === null) return pair.id;
    }
    return null;
  }

  function percent(cost) {
    if (cost === null || cost === undefined) return "n/a";
    const value = 100 * cost;
    return (value >= 0.01 ? value.toFixed(3) : value.toPrecision(2)) + "%";
  }

  function renderProgress() {
    const batch = state.batch;
    let text;
    if (batch) {
      text = batch.n_answered + " / " + batch.n_pairs + " answered in this batch";
      $("progress-fill").style.width = (100 * batch.n_answered / batch.n_pairs) + "%";
    } else {
      text = "No batch waiting";
      $("progress-fill").style.width = "0%";
    }
    text += " \u00b7 total asked so far: " + state.n_queries + " (cost " + percent(state.cost) + ")";
    $("progress-text").textContent = text;
    $("progress-text").title = "Labeling cost: pairs asked / all " + state.n_samples +
      " \u00d7 " + (state.n_samples - 1) + " / 2 pairs of images";
    const memory = state.memory;
    const answers = memory ? memory.n_answers + (memory.n_answers === 1 ? " answer" : " answers") : "";
    if (memory && memory.path) {
      $("memory-text").textContent = "Each answer is saved to " + memory.path + " as you give it (" + answers + " so far).";
    } else if (memory) {
      $("memory-text").textContent = "Answers are kept in memory only (no file): " + answers + " so far.";
    } else {
      $("memory-text").textContent = "No label memory: answers are kept only until the batch returns.";
    }
  }

  function describeSide(side) {
    let text = "image #" + side.index;
    if (side.camera !== null && side.camera !== undefined) text += " \u00b7 camera " + side.camera;
    return text;
  }

  function setImage(img, index, alt) {
    img.alt = alt;
    if (img.dataset.index === String(index)) return;  // no reload, no flicker
    img.dataset.index = String(index);
    img.classList.remove("pixelated");
    img.src = imageUrl(index);
  }

  // The two sides of a pair have the same parts: img-, cap-, ctx-title- and ctx-<which>.
  function buildSide(which) {
    const element = (tag, className, id) => {
      const node = document.createElement(tag);
      if (className) node.className = className;
      if (id) node.id = id + "-" + which;
      return node;
    };
    const frame = element("div", "main-image");
    const img = element("img", "", "img");
    img.alt = "";
    img.addEventListener("load", pixelateIfSmall);
    frame.appendChild(img);
    const context = element("div", "context");
    context.append(element("p", "context-title", "ctx-title"), element("div", "thumbs", "ctx"));
    $("side-" + which).append(frame, element("figcaption", "", "cap"), context);
  }

  function renderSide(which, side) {
    setImage($("img-" + which), side.index, (which === "left" ? "Left: " : "Right: ") + describeSide(side));
    $("cap-" + which).textContent = describeSide(side);
    const thumbs = $("ctx-" + which);
    thumbs.replaceChildren();
    if (side.group_size) {
      $("ctx-title-" + which).textContent = side.context.length
        ? "Others of its group (" + side.group_size + " images):"
        : "Its group has no other image to show.";
      for (const index of side.context) {
        const img = document.createElement("img");
        img.src = imageUrl(index);
        img.alt = "Same group: image #" + index;
        img.title = "image #" + index;
        img.loading = "lazy";
        img.addEventListener("load", pixelateIfSmall);
        thumbs.appendChild(img);
      }
    } else {
      $("ctx-title-" + which).textContent = "";
    }
  }

  function renderStrip() {
    const strip = $("strip");
    strip.replaceChildren();
    pairs().forEach((pair, k) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = String(k + 1);
      button.className = "chip " + (pair.answer || "open");
      if (pair.id === currentId) button.setAttribute("aria-current", "true");
      button.setAttribute("aria-label", "Pair " + (k + 1) + ": " + (pair.answer ? LABELS[pair.answer] : "not answered"));
      button.addEventListener("click", () => { currentId = pair.id; render(); });
      item.appendChild(button);
      strip.appendChild(item);
    });
  }

  function renderAsk() {
    const batch = state.batch;
    const waiting = !batch || batch.n_answered === batch.n_pairs;
    $("waiting").hidden = !waiting;
    $("ask").hidden = waiting;
    if (waiting) {
      const last = state.last_batch;
      if (state.closed) {
        $("waiting-title").textContent = "Annotation finished";
        $("waiting-text").textContent = "UCAL closed this page's server. You can close the tab.";
      } else if (batch) {
        $("waiting-title").textContent = "All " + batch.n_pairs + " pairs answered \u2014 thank you!";
        $("waiting-text").textContent = "UCAL goes on with your answers; the next batch appears here by itself.";
      } else if (last && last.outcome !== "answered") {
        $("waiting-title").textContent = "Batch " + last.number + " stopped (" + last.outcome + ")";
        $("waiting-text").textContent = last.n_answered + " of its " + last.n_pairs +
          " pairs were answered and are saved. Waiting for the next batch\u2026";
      } else if (last) {
        $("waiting-title").textContent = "Waiting for the next batch\u2026";
        $("waiting-text").textContent = "Batch " + last.number + " (" + last.n_pairs +
          " pairs) went back to UCAL. New pairs appear here by themselves.";
      } else {
        $("waiting-title").textContent = "Waiting for the first batch\u2026";
        $("waiting-text").textContent = "UCAL is clustering; the pairs to answer appear here by themselves.";
      }
      return;
    }
    if (positionOf(currentId) < 0) currentId = firstUnanswered();
    const k = positionOf(currentId);
    const pair = batch.pairs[k];
    if (shownId !== pair.id) {
      shownId = pair.id;
      shownAt = performance.now();
    }
    $("pair-position").textContent = "(pair " + (k + 1) + " of " + batch.n_pairs + ")";
    renderSide("left", pair.left);
    renderSide("right", pair.right);
    $("current-answer").textContent = pair.answer
      ? "Your answer: " + LABELS[pair.answer] + " (press another to change it)"
      : "";
    for (const button of document.querySelectorAll(".answer")) {
      button.setAttribute("aria-pressed", String(button.dataset.answer === pair.answer));
      button.disabled = busy;
    }
    $("btn-undo").disabled = busy || batch.undo_pair_id === null;
    $("btn-prev").disabled = k === 0;
    $("btn-next").disabled = k === batch.n_pairs - 1;
    renderStrip();
    preload(batch.pairs[k + 1]);
  }

  function preload(pair) {
    if (!pair) return;
    for (const side of [pair.left, pair.right]) {
      new Image().src = imageUrl(side.index);
    }
  }

  // Send an action of the open batch; on success then() picks the pair to show next.
  async function send(action, body, then) {
    busy = true;
    try {
      state = await api(action, body);
      showError("");
      then();
    } catch (err) {
      showError(err.message);
      await refresh();
    } finally {
      busy = false;
      render();
    }
  }

  async function answer(kind) {
    if (busy || !state || !state.batch || currentId === null) return;
    const id = currentId;
    // How long the person looked at the pair, kept with the answer.
    const seconds = Math.round((performance.now() - shownAt) / 10) / 100;
    await send("answer", { pair_id: id, answer: kind, seconds: Math.min(seconds, 86400) }, () => {
      const next = firstUnanswered(positionOf(id));
      if (next !== null) currentId = next;
    });
  }

  async function undo() {
    if (busy || !state || !state.batch || state.batch.undo_pair_id === null) return;
    const id = state.batch.undo_pair_id;
    await send("undo", { pair_id: id }, () => { currentId = id; });
  }

  function move(step) {
    const k = positionOf(currentId);
    const list = pairs();
    if (k < 0 || !list.length) return;
    const target = Math.min(Math.max(k + step, 0), list.length - 1);
    currentId = list[target].id;
    render();
  }

  // -- review mode -------------------------------------------------------

  function filteredRecords() {
    const filter = $("filter").value;
    return state.records.filter((r) => {
      if (filter === "same" || filter === "different" || filter === "unsure") return r.answer === filter;
      if (filter === "changed") return new Set(r.history.map((h) => h.answer)).size > 1;
      if (filter === "conflict") return r.conflict;
      return true;
    });
  }

  function recordOf(i, j) {
    return state.records.find((r) => r.i === i && r.j === j);
  }

  function describeConflict(conflict) {
    if (conflict.kind === "transitive") {
      return "#" + conflict.i + " and #" + conflict.j + " were answered \u201cdifferent\u201d, " +
        "but \u201csame\u201d answers join them: " +
        conflict.path.map((k) => "#" + k).join(" = ") + ". One of these answers is wrong.";
    }
    if (conflict.kind === "disagreement") {
      return "#" + conflict.i + " and #" + conflict.j + ": " +
        conflict.votes.map((v) => (v.annotator || "someone") + " says " + LABELS[v.answer]).join(", ") +
        (conflict.tied ? ". A tie: your answer decides." : ". The majority is used unless you decide.");
    }
    const record = recordOf(conflict.i, conflict.j);
    const given = record ? record.history.filter((h) => h.answer === "same" || h.answer === "different") : [];
    return "#" + conflict.i + " and #" + conflict.j + " were answered both ways: " +
      given.map((h) => LABELS[h.answer] + " (" + h.source + ")").join(" \u2192 ") + ".";
  }

  function renderConflicts() {
    const conflicts = state.conflicts || [];
    $("conflicts-section").hidden = conflicts.length === 0;
    $("conflicts-title").textContent = "Contradictions (" + conflicts.length + ")";
    $("conflicts").replaceChildren(...conflicts.map((conflict) => {
      const item = document.createElement("li");
      item.className = "conflict " + conflict.kind;
      item.dataset.pair = conflict.i + "-" + conflict.j;
      const text = document.createElement("p");
      text.className = "conflict-text";
      text.textContent = describeConflict(conflict);
      const list = document.createElement("ol");
      list.className = "records";
      for (const [i, j] of conflict.pairs) {
        const record = recordOf(i, j);
        if (record) list.appendChild(recordItem(record));
      }
      item.append(text, list);
      return item;
    }));
  }

  function recordItem(record) {
    const item = document.createElement("li");
    item.className = "record";
    item.dataset.pair = record.i + "-" + record.j;
    const images = document.createElement("div");
    images.className = "record-images";
    for (const side of [record.left, record.right]) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = imageUrl(side.index);
      img.alt = describeSide(side);
      img.loading = "lazy";
      img.addEventListener("load", pixelateIfSmall);
      const caption = document.createElement("figcaption");
      caption.textContent = describeSide(side);
      figure.append(img, caption);
      images.appendChild(figure);
    }
    const info = document.createElement("div");
    info.className = "record-info";
    const verdict = document.createElement("p");
    verdict.className = "verdict " + (record.answer || "open");
    verdict.textContent = record.answer ? LABELS[record.answer] : "No answer";
    if (record.conflict) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "contradiction";
      flag.title = "This answer contradicts others: see Contradictions at the top.";
      verdict.append(" ", flag);
    }
    const meta = document.createElement("p");
    meta.className = "muted";
    const when = record.time ? new Date(record.time * 1000).toLocaleString() : "";
    const who = record.annotator ? record.annotator + " (" + record.source + ")" : record.source;
    meta.textContent = "by " + who + (when ? ", " + when : "") +
      (record.history.length > 1 ? " \u00b7 " + record.history.length + " answers over time" : "");
    const buttons = document.createElement("div");
    buttons.className = "record-buttons";
    for (const kind of ["same", "different"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "answer small " + kind;
      button.textContent = kind === "same" ? "Same person" : "Different";
      button.setAttribute("aria-pressed", String(record.answer === kind));
      button.addEventListener("click", () => correct(record, kind));
      buttons.appendChild(button);
    }
    info.append(verdict, meta, buttons);
    item.append(images, info);
    return item;
  }

  function renderReview() {
    $("review").hidden = false;
    $("help-ask").hidden = true;
    $("help-save").hidden = true;
    $("help-review").hidden = false;
    $("bar").hidden = true;
    $("mode-title").textContent = "review";
    renderConflicts();
    const records = filteredRecords();
    const pages = Math.max(1, Math.ceil(records.length / PAGE_SIZE));
    reviewPage = Math.min(reviewPage, pages - 1);
    const shown = records.slice(reviewPage * PAGE_SIZE, (reviewPage + 1) * PAGE_SIZE);
    $("records").replaceChildren(...shown.map(recordItem));
    $("review-count").textContent = records.length + " of " + state.records.length + " pairs";
    $("page-info").textContent = "page " + (reviewPage + 1) + " of " + pages;
    $("page-prev").disabled = reviewPage === 0;
    $("page-next").disabled = reviewPage >= pages - 1;
    const n_conflicts = (state.conflicts || []).length;
    $("progress-text").textContent = state.records.length + " answered pairs \u00b7 " +
      (n_conflicts ? n_conflicts + (n_conflicts === 1 ? " contradiction" : " contradictions") + " \u00b7 " : "") +
      state.n_corrections + " corrected in this session";
    $("memory-text").textContent = state.memory.path ? "Memory file: " + state.memory.path : "";
    if (state.finished) {
      $("review").hidden = true;
      $("waiting").hidden = false;
      $("waiting-title").textContent = "Review finished";
      $("waiting-text").textContent = state.n_corrections + " corrections recorded. You can close the tab.";
    }
  }

  async function correct(record, kind) {
    try {
      const reply = await api("correct", { i: record.i, j: record.j, answer: kind });
      const k = state.records.findIndex((r) => r.i === record.i && r.j === record.j);
      if (k >= 0) state.records[k] = reply.record;
      state.n_corrections = reply.n_corrections;
      state.conflicts = reply.conflicts;
      showError("");
      // A correction may settle (or create) contradictions of other pairs too.
      await refresh();
    } catch (err) {
      showError(err.message);
    }
    render();
  }

  async function finish() {
    try {
      await api("finish", {});
      state.finished = true;
      showError("");
    } catch (err) {
      showError(err.message);
    }
    render();
  }

  // -- shared ------------------------------------------------------------

  function pixelateIfSmall(event) {
    // Low-resolution crops look sharper scaled up without smoothing.
    if (event.target.naturalWidth && event.target.naturalWidth < 100) {
      event.target.classList.add("pixelated");
    }
  }

  function kappa(value) {
    return value === null || value === undefined ? "n/a" : value.toFixed(2);
  }

  // A team's page: who this is, what everyone has left, and how much they agree.
  function renderTeam() {
    const team = state.team;
    $("team").hidden = !team;
    if (!team) return;
    const roles = {
      annotator: "You answer as " + team.name + ": only the pairs given to you appear here.",
      reviewer: "You review as " + team.name + ": settle the disagreements, ties first.",
      overview: "Team overview: each person answers on their own link.",
    };
    $("team-who").textContent = roles[team.role];
    const agreement = team.agreement;
    $("team-table").replaceChildren(...team.members.map((member) => {
      const row = document.createElement("tr");
      const mine = agreement.annotators[member.name];
      for (const text of [member.name, member.n_open + " open", member.n_answers + " answers",
                          mine ? "kappa " + kappa(mine.kappa) + " on " + mine.n_common : "kappa n/a"]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    }));
    const overall = agreement.overall;
    $("team-agreement").textContent = "Agreement on the pairs two people answered: " +
      (overall.n_common ? Math.round(100 * overall.agreement) + "%, Cohen's kappa " + kappa(overall.kappa) +
        " (" + overall.n_common + " comparisons)" : "none yet") + ".";
  }

  // -- matches mode (ucal search --serve) ----------------------------------
  function matchFigure(match) {
    const figure = document.createElement("figure");
    figure.className = "match";
    const img = document.createElement("img");
    img.src = imageUrl(match.image);
    img.alt = "match " + match.rank;
    const caption = document.createElement("figcaption");
    const parts = ["#" + match.rank, match.similarity.toFixed(3)];
    if (match.camera !== undefined) parts.push("cam " + match.camera);
    if (match.id !== undefined) parts.push("id " + match.id);
    caption.textContent = parts.join(" \u00b7 ");
    caption.title = match.name || "";
    figure.append(img, caption);
    return figure;
  }

  function renderMatches() {
    $("matches").hidden = false;
    $("help-ask").hidden = true;
    $("help-save").hidden = true;
    $("help-matches").hidden = false;
    $("bar").hidden = true;
    $("mode-title").textContent = "search";
    $("progress-text").textContent = state.results.length + " queries, top " + state.top +
      " of " + state.n_gallery + " gallery images";
    $("match-list").replaceChildren(...state.results.map((result) => {
      const item = document.createElement("li");
      item.className = "match-row";
      const query = document.createElement("figure");
      query.className = "match query";
      const img = document.createElement("img");
      img.src = imageUrl(result.query);
      img.alt = "query";
      const caption = document.createElement("figcaption");
      caption.textContent = "query";
      caption.title = result.name || "";
      query.append(img, caption);
      item.append(query, ...result.matches.map(matchFigure));
      if (!result.matches.length) {
        const none = document.createElement("p");
        none.className = "muted";
        none.textContent = "no match left after the camera filter";
        item.append(none);
      }
      return item;
    }));
  }

  function render() {
    if (!state) return;
    renderTeam();
    if (state.mode === "matches") renderMatches();
    else if (state.mode === "review") renderReview();
    else {
      renderProgress();
      renderAsk();
    }
  }

  async function refresh() {
    try {
      const fresh = await api("state");
      const changed = !state || fresh.version === undefined || fresh.version !== state.version;
      state = fresh;
      showError("");
      if (changed) render();
    } catch (err) {
      showError(err.message);
    }
  }

  async function poll() {
    // A review of a file is still; a team's review changes as people answer.
    const still = state && (state.mode === "matches" || (state.mode === "review" && !state.team));
    if (!busy && !still) await refresh();
    window.setTimeout(poll, POLL_MS);
  }

  document.addEventListener("keydown", (event) => {
    if (!state || state.mode === "review" || state.mode === "matches") return;
    // A held-down key must not answer one pair after another.
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const actions = {
      s: () => answer("same"),
      d: () => answer("different"),
      n: () => answer("unsure"),
      u: () => undo(),
      ArrowLeft: () => move(-1),
      ArrowRight: () => move(1),
    };
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (actions[key]) {
      event.preventDefault();
      actions[key]();
    }
  });

  buildSide("left");
  buildSide("right");
  for (const button of document.querySelectorAll("#ask .answer")) {
    button.addEventListener("click", () => answer(button.dataset.answer));
  }
  $("btn-undo").addEventListener("click", undo);
  $("btn-prev").addEventListener("click", () => move(-1));
  $("btn-next").addEventListener("click", () => move(1));
  $("filter").addEventListener("change", () => { reviewPage = 0; render(); });
  $("page-prev").addEventListener("click", () => { reviewPage -= 1; render(); });
  $("page-next").addEventListener("click", () => { reviewPage += 1; render(); });
  $("btn-finish").addEventListener("click", finish);

  poll();
})();
