// The Generate page: start a job, poll its progress, show the best image and the candidates.
"use strict";

const $ = (id) => document.getElementById(id);

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  for (const name of info.samplers) {
    const option = new Option(name, name, false, name === info.defaults.sampler);
    $("sampler").add(option);
  }
  $("steps").value = info.defaults.steps;
  $("n").max = info.limits.n;
  $("steps").max = info.limits.steps;
  if (info.guidance !== null) {  // a model with a guide network: autoguidance, 1 for none
    $("guidance").value = info.guidance;
    $("guidance").max = info.limits.guidance;
    $("guidance-field").hidden = false;
  }
}

function request() {
  const body = { n: Number($("n").value) || 1, sampler: $("sampler").value };
  if ($("steps").value) body.steps = Number($("steps").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (!$("guidance-field").hidden && $("guidance").value !== "") body.guidance = Number($("guidance").value);
  return body;
}

function showError(detail) {
  const text = Array.isArray(detail) ? detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ") : detail;
  $("status").textContent = `Error: ${text}`;
}

function showResult(result) {
  $("result").src = `data:image/png;base64,${result.image}`;
  const score = result.scores ? `, ${result.scorer} score ${result.scores[0].toFixed(3)}` : "";
  const guidance = result.guidance === null ? "" : `, guidance ${result.guidance}`;
  $("caption").textContent =
    `seed ${result.seed}, ${result.sampler}, ${result.steps} steps${guidance}${score}, ${result.seconds.toFixed(2)} s`;
  $("download").href = $("result").src;
  $("download").download = `catdiff-seed-${result.seed}.png`;
  $("best").hidden = false;
  const list = $("candidates");
  list.replaceChildren();
  if (result.candidates.length > 1) {
    for (const candidate of result.candidates) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${candidate.image}`;
      img.alt = "candidate";
      const caption = document.createElement("figcaption");
      caption.textContent = candidate.score === null ? "" : candidate.score.toFixed(3);
      figure.append(img, caption);
      list.append(figure);
    }
  }
  $("status").textContent = `Done (shared a batch with ${result.batched_with - 1} other request(s)).`;
}

async function generate(event) {
  event.preventDefault();
  $("generate").disabled = true;
  $("progress").hidden = false;
  $("progress").value = 0;
  $("status").textContent = "Queued…";
  try {
    const response = await fetch("/api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request()),
    });
    let job = await response.json();
    if (!response.ok) return showError(job.detail);
    while (job.status === "queued" || job.status === "running") {
      $("progress").value = job.steps_done / job.steps;
      if (job.status === "running") $("status").textContent = `Step ${job.steps_done} of ${job.steps}…`;
      await new Promise((resolve) => setTimeout(resolve, 150));
      job = await (await fetch(`/api/jobs/${job.id}`)).json();
    }
    if (job.status === "failed") return showError(job.error);
    $("progress").value = 1;
    showResult(job.result);
  } catch (error) {
    showError(String(error));
  } finally {
    $("generate").disabled = false;
  }
}

$("controls").addEventListener("submit", generate);
loadInfo();
