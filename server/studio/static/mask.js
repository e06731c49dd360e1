// Mask painting over the source image: a canvas at the source's own size, painted white where the model should
// repaint. Brush and eraser with a size, invert, clear, undo and redo (each stroke is a step); the mask leaves as
// a PNG data URL, its edges softened by `feather` pixels when set. It stays for the next runs while the first source
// does.

const HISTORY = 30;

export class MaskPainter {
  constructor(canvas, image) {
    this.canvas = canvas;
    this.image = image;
    this.ctx = canvas.getContext("2d");
    this.size = 40;
    this.erasing = false;
    this.painted = false;
    this.drawing = false;
    this.feather = 0;
    this.undos = [];
    this.redos = [];
    canvas.addEventListener("pointerdown", (e) => {
      this.remember();
      this.drawing = true;
      canvas.setPointerCapture(e.pointerId);
      this.paint(e);
    });
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

  // A mask kept with a task, painted back over its source (re-running reuses it as it was).
  restore(src, maskUrl) {
    return this.reset(src).then(() => new Promise((resolve) => {
      const painted = new Image();
      painted.onload = () => {
        this.ctx.drawImage(painted, 0, 0, this.canvas.width, this.canvas.height);
        this.painted = true;
        resolve();
      };
      painted.onerror = () => resolve();
      painted.src = maskUrl;
    }));
  }

  // Keep the mask as it is now, for undo (a new change forgets what was undone).
  remember() {
    this.undos.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undos.length > HISTORY) this.undos.shift();
    this.redos = [];
  }

  undo() {
    if (!this.undos.length) return false;
    this.redos.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    this.ctx.putImageData(this.undos.pop(), 0, 0);
    return true;
  }

  redo() {
    if (!this.redos.length) return false;
    this.undos.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    this.ctx.putImageData(this.redos.pop(), 0, 0);
    return true;
  }

  clear() {
    this.ctx.globalCompositeOperation = "source-over";
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
  }

  invert() {
    this.remember();
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
    if (!this.feather) return this.canvas.toDataURL("image/png");
    // Feathered: the edges blurred, so the repainted area blends into what is kept.
    const soft = document.createElement("canvas");
    soft.width = this.canvas.width;
    soft.height = this.canvas.height;
    const ctx = soft.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, soft.width, soft.height);
    ctx.filter = `blur(${this.feather}px)`;
    ctx.drawImage(this.canvas, 0, 0);
    return soft.toDataURL("image/png");
  }
}
