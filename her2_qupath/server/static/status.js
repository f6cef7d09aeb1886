// Colour the class swatches and refresh the page while jobs are queued or running.
document.querySelectorAll(".swatch[data-color]").forEach(function (el) {
  el.style.background = el.dataset.color;
});
if (document.body.dataset.active === "true") {
  setTimeout(function () { window.location.reload(); }, 3000);
}
