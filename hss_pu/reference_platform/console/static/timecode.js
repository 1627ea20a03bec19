// The emulated camera's time code, read back from a frame in the page: what the bench
// (bench/console.py) measures the browser's glass-to-glass delay with. A port of
// read_timecode in hss_pu/media/sources/emulated.py: a row of 48 black/white blocks under
// the top-left corner, marker 10, 42-bit epoch milliseconds, CRC-4. Nothing here runs
// unless called: the live view does not pay for it.
"use strict";

(() => {
  const CODE_BITS = 48, DATA_BITS = 42;
  const BLACK = 16, WHITE = 235; // the luma drawn; a browser shows them as 0 and 255 RGB
  let canvas = null;

  // Code block size for a frame width (emulated.py _block): 16 px at 1280 wide.
  function block(width) {
    const b = Math.floor(width / 80) & ~1;
    return b >= 4 ? b : Math.max(2, Math.floor(width / 50) & ~1);
  }

  // CRC-4/ITU (x^4 + x + 1) over a list of bits.
  function crc4(bits) {
    let reg = 0;
    for (const bit of bits) {
      const fb = ((reg >> 3) & 1) ^ bit;
      reg = (reg << 1) & 0xf;
      if (fb) reg ^= 0x3;
    }
    return reg;
  }

  function size(source) {
    if (source instanceof HTMLVideoElement) return [source.videoWidth, source.videoHeight];
    if (source instanceof HTMLImageElement) return [source.naturalWidth, source.naturalHeight];
    return [source.width, source.height]; // canvas, ImageBitmap, VideoFrame
  }

  // The capture time (epoch s) drawn into what `source` shows now (a <video>, <img>,
  // <canvas>), or null when there is no readable code. Only the code's row is copied out.
  function read(source) {
    const [w, h] = size(source);
    const b = block(w);
    const q = Math.max(1, b >> 2);
    const x0 = b, y0 = b;
    if (!w || y0 + b > h || x0 + CODE_BITS * b > w) return null;
    if (!canvas) canvas = document.createElement("canvas");
    if (canvas.width !== CODE_BITS * b || canvas.height !== b) {
      canvas.width = CODE_BITS * b;
      canvas.height = b;
    }
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(source, x0, y0, CODE_BITS * b, b, 0, 0, CODE_BITS * b, b);
    const px = ctx.getImageData(0, 0, CODE_BITS * b, b).data;
    const mid = (BLACK + WHITE) / 2;
    const bits = [];
    for (let i = 0; i < CODE_BITS; i++) {
      let sum = 0, n = 0;
      for (let y = q; y < b - q; y++) {
        for (let x = i * b + q; x < (i + 1) * b - q; x++) {
          const k = 4 * (y * CODE_BITS * b + x);
          sum += 0.299 * px[k] + 0.587 * px[k + 1] + 0.114 * px[k + 2];
          n++;
        }
      }
      const level = sum / n;
      if (Math.abs(level - mid) < (WHITE - BLACK) / 6) return null; // neither: not our code
      bits.push(level > mid ? 1 : 0);
    }
    if (bits[0] !== 1 || bits[1] !== 0) return null;
    let crc = 0;
    for (let i = 44; i < 48; i++) crc = crc * 2 + bits[i];
    if (crc4(bits.slice(0, 44)) !== crc) return null;
    let ms = 0; // 42 bits: beyond 32-bit integer operators, within a double's 53
    for (let i = 2; i < 2 + DATA_BITS; i++) ms = ms * 2 + bits[i];
    return ms / 1000;
  }

  // For `seconds`, each frame the <video> presents: [time code or null, epoch s when it
  // is shown]. requestVideoFrameCallback gives every presented frame and when it reaches
  // the screen; without it, a poll per animation frame of what is shown then.
  function sample(video, seconds) {
    return new Promise((resolve) => {
      const out = [];
      const end = performance.now() + seconds * 1000;
      // performance.now() -> epoch s, taken at each frame (the two clocks may drift apart).
      const epoch = (t) => (t + Date.now() - performance.now()) / 1000;
      if ("requestVideoFrameCallback" in video) {
        const onFrame = (now, meta) => {
          out.push([read(video), epoch(meta.expectedDisplayTime)]);
          if (performance.now() < end) video.requestVideoFrameCallback(onFrame);
          else resolve(out);
        };
        video.requestVideoFrameCallback(onFrame);
        // A video that presents nothing at all still ends the sampling.
        setTimeout(() => resolve(out), seconds * 1000 + 2000);
      } else {
        let last = -1;
        const poll = (now) => {
          if (video.currentTime !== last) {
            last = video.currentTime;
            out.push([read(video), epoch(now)]);
          }
          if (performance.now() < end) requestAnimationFrame(poll);
          else resolve(out);
        };
        requestAnimationFrame(poll);
      }
    });
  }

  window.hssReadTimecode = read;
  window.hssSampleTimecodes = sample;
})();
