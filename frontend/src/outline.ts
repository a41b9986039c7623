// Segmentation outlines from the mask the server stores (0 background, 128 cytoplasm,
// 255 nucleus): the boundary pixels of the WBC and of the nucleus, as an RGBA overlay.

export interface Rgba {
  r: number;
  g: number;
  b: number;
  a: number;
}

export const WBC_OUTLINE: Rgba = { r: 255, g: 221, b: 0, a: 255 };
export const NUCLEUS_OUTLINE: Rgba = { r: 0, g: 229, b: 255, a: 255 };

/** Boundary of the region `inside(v)`: pixels inside with a 4-neighbour outside (or on
 * the image border). One byte per pixel, 1 on the boundary. */
export function boundary(
  gray: ArrayLike<number>,
  width: number,
  height: number,
  inside: (v: number) => boolean,
): Uint8Array {
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (!inside(gray[i])) continue;
      if (
        x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        !inside(gray[i - 1]) || !inside(gray[i + 1]) ||
        !inside(gray[i - width]) || !inside(gray[i + width])
      ) {
        out[i] = 1;
      }
    }
  }
  return out;
}

/** The overlay: WBC boundary and nucleus boundary, each thickened by one pixel so they
 * stay visible when the image is shown smaller than its size. `rgbaMask` is what a
 * canvas gives for the mask PNG (grey in R, G and B). */
export function outlineOverlay(rgbaMask: ArrayLike<number>, width: number, height: number): Uint8ClampedArray<ArrayBuffer> {
  const gray = new Uint8Array(width * height);
  for (let i = 0; i < gray.length; i++) gray[i] = rgbaMask[4 * i];
  const wbc = boundary(gray, width, height, (v) => v >= 64);
  const nucleus = boundary(gray, width, height, (v) => v >= 192);
  const out = new Uint8ClampedArray(width * height * 4);
  const paint = (edges: Uint8Array, c: Rgba) => {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (!edges[y * width + x]) continue;
        for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]) {
          const nx = x + dx;
          const ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
          const j = 4 * (ny * width + nx);
          out[j] = c.r;
          out[j + 1] = c.g;
          out[j + 2] = c.b;
          out[j + 3] = c.a;
        }
      }
    }
  };
  paint(wbc, WBC_OUTLINE);
  paint(nucleus, NUCLEUS_OUTLINE);
  return out;
}
