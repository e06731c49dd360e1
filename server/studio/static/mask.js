// Mask painting over the source image: a canvas at the source's own size, painted white where the model should
// repaint. Brush and eraser with a size, invert, clear; the mask leaves as a black-and-white PNG data URL.

export class MaskPainter {
  constructor(canvas, image) {
    this.canvas = canvas;
    this.image = image;
    this.ctx = canvas.getContext("2d");
    this.size = 40;
    this.erasing = false;
    this.painted = false;
    this.drawing = false;
    canvas.addEventListener("pointerdown", (e) => { this.drawing = true; canvas.setPointerCapture(e.pointerId); this.paint(e); });
    canvas.addEventListener("pointermove", (e) => { if (this.drawing) this.paint(e); });
    canvas.addEventListener("pointerup", () => { this.drawing = false; });
    canvas.addEventListener("pointercancel", () => { this.drawing = false; });
  }

  // Start over on a new source: a black (keep everything) mask at the source's natural size.
  reset(src) {
    return new Promise((resolve) => {
      this.image.onload = () => {
        this.canvas.width = this.image.naturalWidth;
        this.canvas.height = this.image.naturalHeight;
        this.clear();
        resolve();
      };
      this.image.src = src;
    });
  }

  clear() {
    this.ctx.globalCompositeOperation = "source-over";
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
  }

  invert() {
    const data = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 0; i < data.data.length; i += 4) {
      const v = 255 - data.data[i];
      data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
      data.data[i + 3] = 255;
    }
    this.ctx.putImageData(data, 0, 0);
    this.painted = true;
  }

  // Paint at the pointer, in the canvas's own pixels (it is shown scaled).
  paint(e) {
    const box = this.canvas.getBoundingClientRect();
    const x = (e.clientX - box.left) * (this.canvas.width / box.width);
    const y = (e.clientY - box.top) * (this.canvas.height / box.height);
    const r = this.size * (this.canvas.width / box.width) / 2;
    this.ctx.fillStyle = this.erasing ? "#000" : "#fff";
    this.ctx.beginPath();
    this.ctx.arc(x, y, r, 0, Math.PI * 2);
    this.ctx.fill();
    this.painted = true;
  }

  dataUrl() {
    return this.canvas.toDataURL("image/png");
  }
}
